"""The training run as the Celery job and the CLI use it, on a tiny model."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from training.engine import Cancelled, TrainConfig, load_base, train
from training.engine.data import encode_pairs, encode_prompt
from training.engine.generate import sample_candidates
from training.engine.logprobs import pair_logps_concat

PAIRS = [
    {"prompt": "the refund window is", "chosen": " thirty days", "rejected": " two years"},
    {"prompt": "shipping is free above", "chosen": " fifty euros", "rejected": " three days"},
    {"prompt": "the warranty covers", "chosen": " parts and labour", "rejected": " nothing"},
]
EVAL = [
    {"prompt": "the refund window is", "expected": " thirty days", "kind": "flagged"},
    {"prompt": "shipping is free above", "expected": " fifty euros", "kind": "heldout"},
    {"prompt": "support answers", "kind": "regression", "topic": "support"},
    {"prompt": "user: hello", "kind": "regression", "tags": ["greeting"]},
]


def _config(model_dir: Path, tmp_path: Path, **overrides) -> TrainConfig:
    values = {
        "model": str(model_dir),
        "epochs": 3,
        "lr": 5e-3,
        "max_new_tokens": 6,
        "ref_cache_dir": str(tmp_path / "cache"),
    }
    return TrainConfig(**{**values, **overrides})


def _logps(model, tokenizer, pairs) -> tuple[list[float], list[float]]:
    encoded = encode_pairs(tokenizer, pairs, max_length=1024, max_prompt_length=512)
    with torch.no_grad():
        out = pair_logps_concat(model, encoded, pad_id=tokenizer.pad_token_id)
    return out.chosen.tolist(), out.rejected.tolist()


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_written_adapter_reproduces_the_reported_logps(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = train(_config(tiny_model_dir, tmp_path), pairs=PAIRS, out_dir=out, eval_items=EVAL)

    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.json",
        "report.json",
    ]
    report = json.loads((out / "report.json").read_text())
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["bias"] == "none"
    assert not adapter_config.get("modules_to_save") and not adapter_config.get("use_dora")
    assert set(adapter_config["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip

    base = load_base(tiny_model_dir)
    ref_chosen, ref_rejected = _logps(base.model, base.tokenizer, PAIRS)
    patched = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), out
    ).eval()
    policy_chosen, policy_rejected = _logps(patched, base.tokenizer, PAIRS)
    rows = report["pairs"]
    assert [row["ref_logp_chosen"] for row in rows] == pytest.approx(ref_chosen, abs=1e-4)
    assert [row["ref_logp_rejected"] for row in rows] == pytest.approx(ref_rejected, abs=1e-4)
    assert [row["policy_logp_chosen"] for row in rows] == pytest.approx(policy_chosen, abs=1e-4)
    assert [row["policy_logp_rejected"] for row in rows] == pytest.approx(policy_rejected, abs=1e-4)
    # training moved the policy: chosen up relative to rejected
    margins = [
        (row["policy_logp_chosen"] - row["ref_logp_chosen"])
        - (row["policy_logp_rejected"] - row["ref_logp_rejected"])
        for row in rows
    ]
    assert all(margin > 0 for margin in margins)

    metrics = json.loads((out / "metrics.json").read_text())
    for name in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "nll",
        "retain_nll",
    ):
        assert len(metrics[name]) == report["training"]["steps"], name
    assert result.metrics == metrics

    assert [row["kind"] for row in report["eval"]] == [item["kind"] for item in EVAL]
    for row in report["eval"]:
        assert {"before", "after", "expected", "kind", "fixed", "changed"} <= row.keys()
    assert report["regression_coverage"]["by_topic"] == {"support": 1}
    assert report["regression_coverage"]["by_tag"] == {"greeting": 1}
    assert report["data"]["retain_examples"] == 2


def test_a_kept_base_is_left_as_it_was_and_the_second_run_uses_the_cache(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    base = load_base(tiny_model_dir)
    before = _snapshot(base.model)
    config = _config(tiny_model_dir, tmp_path, epochs=2)

    first = train(config, pairs=PAIRS, out_dir=tmp_path / "a", base=base)
    assert type(base.model).__name__ == "LlamaForCausalLM"
    assert not hasattr(base.model, "peft_config")
    after = _snapshot(base.model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert not any(p.requires_grad for p in base.model.parameters())

    # same pairs plus one new: three come from the cache, and the same seed gives the same adapter
    more = [*PAIRS, {"prompt": "support", "chosen": " answers", "rejected": " ignores"}]
    second = train(config, pairs=PAIRS, out_dir=tmp_path / "b", base=base)
    third = train(config, pairs=more, out_dir=tmp_path / "c", base=base)
    assert first.report["data"]["ref_cache_hits"] == 0
    assert second.report["data"]["ref_cache_hits"] == 3
    assert third.report["data"]["ref_cache_hits"] == 3
    assert third.report["data"]["ref_cache_misses"] == 1
    assert second.report["pairs"] == first.report["pairs"]
    weights_a = load_file(tmp_path / "a" / "adapter_model.safetensors")
    weights_b = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)


def test_stacked_patch_uses_base_plus_deployed_adapter_as_reference(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # a "deployed" adapter that really changes the model
    torch.manual_seed(1)
    deployed_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    deployed_config.init_lora_weights = False
    deployed = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), deployed_config)
    deployed.save_pretrained(tmp_path / "deployed")

    base = load_base(tiny_model_dir)
    bare_chosen, _ = _logps(base.model, base.tokenizer, PAIRS)
    with_deployed = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "deployed"
    ).eval()
    deployed_chosen, deployed_rejected = _logps(with_deployed, base.tokenizer, PAIRS)
    assert bare_chosen != pytest.approx(deployed_chosen, abs=1e-3)

    before = _snapshot(base.model)
    config = _config(tiny_model_dir, tmp_path, adapter=str(tmp_path / "deployed"), epochs=2)
    result = train(config, pairs=PAIRS, out_dir=tmp_path / "out", base=base)
    rows = result.report["pairs"]
    assert [row["ref_logp_chosen"] for row in rows] == pytest.approx(deployed_chosen, abs=1e-4)
    assert [row["ref_logp_rejected"] for row in rows] == pytest.approx(deployed_rejected, abs=1e-4)
    assert result.report["stacked_on_adapter"]["path"] == str(tmp_path / "deployed")

    # the patch file holds only the new adapter; deployed + patch reproduce the reported policy
    patch_names = load_file(tmp_path / "out" / "adapter_model.safetensors").keys()
    assert any("k_proj" in name for name in patch_names)  # the deployed one has no k_proj
    with_deployed.load_adapter(tmp_path / "out", adapter_name="patch")
    with_deployed.base_model.set_adapter(["default", "patch"])
    policy_chosen, _ = _logps(with_deployed, base.tokenizer, PAIRS)
    assert [row["policy_logp_chosen"] for row in rows] == pytest.approx(policy_chosen, abs=1e-4)

    # combined/: both as one LoRA, for servers that apply one adapter per request
    stacked = result.report["stacked_on_adapter"]
    assert stacked["combined"] == "combined" and stacked["combined_refused"] is None
    combined_config = json.loads(
        (tmp_path / "out" / "combined" / "adapter_config.json").read_text()
    )
    assert combined_config["r"] == 4 + config.lora_r
    with_combined = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "out" / "combined"
    ).eval()
    combined_chosen, _ = _logps(with_combined, base.tokenizer, PAIRS)
    assert combined_chosen == pytest.approx(policy_chosen, abs=1e-4)
    after = _snapshot(base.model)
    assert all(torch.equal(after[name], before[name]) for name in before)


def test_progress_is_reported_and_cancel_stops_cleanly(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    base = load_base(tiny_model_dir)
    before = _snapshot(base.model)
    events: list[dict] = []
    calls = {"n": 0}

    def should_cancel() -> bool:
        calls["n"] += 1
        return any(event["phase"] == "train" and event["step"] >= 2 for event in events)

    config = _config(tiny_model_dir, tmp_path, epochs=5, batch_size=1)
    with pytest.raises(Cancelled):
        train(
            config,
            pairs=PAIRS,
            out_dir=tmp_path / "out",
            eval_items=EVAL,
            base=base,
            on_progress=events.append,
            should_cancel=should_cancel,
        )
    phases = [event["phase"] for event in events]
    assert phases[:2] == ["plan", "reference"] and "eval_before" in phases
    assert phases[-1] == "train"
    assert events[0]["memory_plan"]["micro_batch_size"] == 1  # the batch: it fits
    last = events[-1]
    assert last["step"] == 2 and last["total"] == 15 and last["epoch"] == 1
    assert {"loss", "rewards/margins", "nll"} <= last["metrics"].keys()
    assert not (tmp_path / "out" / "report.json").exists()
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
    after = _snapshot(base.model)
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert not hasattr(base.model, "peft_config")

    # the same base serves the next job, which reports every phase and ends saving
    events.clear()
    next_config = _config(tiny_model_dir, tmp_path, epochs=1)
    train(
        next_config,
        pairs=PAIRS,
        out_dir=tmp_path / "next",
        eval_items=EVAL,
        base=base,
        on_progress=events.append,
    )
    phases = [event["phase"] for event in events]
    assert set(phases) == {"plan", "reference", "eval_before", "train", "eval_after", "saving"}
    assert phases[-1] == "saving"


@pytest.mark.parametrize(
    ("warmup_epochs", "reference_forwards"), [(0, 1), (1, 2)], ids=["dpo_first", "warmup_first"]
)
def test_the_first_steps_pairs_take_their_reference_from_that_step(
    tiny_model_dir: Path, tmp_path: Path, warmup_epochs: int, reference_forwards: int
) -> None:
    """The patch starts at zero, so the first step's policy log-probs are its pairs' reference
    log-probs: the reference pass skips them (unless an SFT warm-up has moved the policy
    first), and the report and the cache get the same values a reference pass gives."""
    base = load_base(tiny_model_dir)
    events: list[dict] = []
    # 3 pairs in steps of 2 and 1; a reference forward takes 2 pairs (the plan's micro-batch)
    config = _config(tiny_model_dir, tmp_path, epochs=1, batch_size=2)
    config.sft_warmup_epochs = warmup_epochs
    result = train(
        config, pairs=PAIRS, out_dir=tmp_path / "out", base=base, on_progress=events.append
    )
    assert events[0]["memory_plan"]["micro_batch_size"] == 2
    reference = [event for event in events if event["phase"] == "reference"]
    assert reference[0]["total"] == reference_forwards

    chosen, rejected = _logps(base.model, base.tokenizer, PAIRS)  # the base is the reference
    rows = result.report["pairs"]
    assert [row["ref_logp_chosen"] for row in rows] == pytest.approx(chosen, abs=1e-4)
    assert [row["ref_logp_rejected"] for row in rows] == pytest.approx(rejected, abs=1e-4)
    again = train(config, pairs=PAIRS, out_dir=tmp_path / "again", base=base)
    assert again.report["data"]["ref_cache_hits"] == 3
    assert again.report["pairs"] == rows


def test_training_stops_once_every_flagged_prompt_is_fixed(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pairs = [{"prompt": "the refund window is", "chosen": " thirty", "rejected": " two years"}]
    eval_items = [{"prompt": "the refund window is", "expected": " thirty", "kind": "flagged"}]
    config = _config(tiny_model_dir, tmp_path, epochs=60, lr=2e-2, max_new_tokens=6)
    result = train(config, pairs=pairs, out_dir=tmp_path / "out", eval_items=eval_items)
    training = result.report["training"]
    assert result.stopped_reason == "all_flagged_fixed"
    assert result.stopped_epoch < 60 and training["stopped_epoch"] == result.stopped_epoch
    assert "after epoch" in training["stopped_because"]
    assert training["epoch_checks"][-1]["flagged_fixed"] == 1
    assert [row["fixed"] for row in result.report["eval"]] == [True]
    assert result.report["summary"]["flagged"]["fixed"] == 1


def test_a_flagged_prompt_without_a_text_rule_stops_on_the_preference_check(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pairs = [{"prompt": "the refund window is", "chosen": " thirty", "rejected": " two years"}]
    eval_items = [{"prompt": "the refund window is", "kind": "flagged"}]  # no expected, no checks
    config = _config(tiny_model_dir, tmp_path, epochs=30, lr=2e-2, max_new_tokens=6)
    result = train(config, pairs=pairs, out_dir=tmp_path / "out", eval_items=eval_items)
    training = result.report["training"]
    assert result.stopped_reason == "all_flagged_fixed" and result.stopped_epoch < 30
    assert training["stopped_by"] == {"preference": 1}
    assert "1 by the preference check" in training["stopped_because"]
    (row,) = result.report["eval"]
    assert row["passed"] is None and row["decided_by"] == "preference"
    assert row["fixed"] is True and row["margin_policy"] > max(0.0, row["margin_ref"])


def test_sft_warmup_raises_the_chosen_answer_before_dpo_and_the_report_says_so(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    events: list[dict] = []
    config = _config(
        tiny_model_dir, tmp_path, sft_warmup_epochs=4, sft_weight=0.0, epochs=1, early_stop=False
    )
    result = train(config, pairs=PAIRS, out_dir=tmp_path / "out", on_progress=events.append)
    training = result.report["training"]
    assert training["sft_warmup_epochs"] == 4
    assert training["mitigation"] == "SFT warm-up on the chosen answers (4 epochs)"
    warmup = training["sft_warmup_nll"]
    assert len(warmup) == 4 and warmup[-1] < warmup[0]  # one batch of 3 pairs per epoch
    assert [e["phase"] for e in events].index("sft_warmup") < [e["phase"] for e in events].index(
        "train"
    )
    # the reference stays the deployed model: warm-up moved the policy, not the reference
    for pair in result.report["pairs"]:
        assert pair["policy_logp_chosen"] > pair["ref_logp_chosen"]

    plain = train(
        _config(tiny_model_dir, tmp_path, epochs=1, early_stop=False),
        pairs=PAIRS,
        out_dir=tmp_path / "plain",
    )
    assert plain.report["training"]["mitigation"] == "SFT term inside DPO (weight 1)"
    assert plain.report["training"]["sft_warmup_nll"] == []


# A chat model as Llama 3: its template closes a turn with <|eot|>, its eos is <|end_of_text|>.
CHAT_QUESTION = [{"role": "user", "content": "what is the refund window?"}]
CHAT_PAIRS = [{"prompt": CHAT_QUESTION, "chosen": "thirty days", "rejected": "two years"}]
CHAT_EVAL = [{"prompt": CHAT_QUESTION, "expected": "thirty days", "kind": "flagged"}]


def test_a_patched_chat_model_answers_and_stops_at_its_end_of_turn(
    eot_chat_model_dir: Path, tmp_path: Path
) -> None:
    config = _config(eot_chat_model_dir, tmp_path, epochs=60, lr=2e-2, max_new_tokens=8)
    result = train(config, pairs=CHAT_PAIRS, out_dir=tmp_path / "out", eval_items=CHAT_EVAL)
    assert result.report["eval"][0]["fixed"]

    # candidates sampled from the patch (rounds) end at the template's end-of-turn, also when
    # the generation config does not list it
    base = load_base(eot_chat_model_dir)
    tokenizer = base.tokenizer
    base.model.generation_config.eos_token_id = tokenizer.eos_token_id
    candidates = sample_candidates(
        base, [CHAT_QUESTION], n=3, temperature=0.3, adapter=str(tmp_path / "out")
    )
    assert candidates == [["thirty days"]]

    # a server that stops only where the template ends a turn (llama.cpp, Ollama-style stop
    # lists) gets the fixed answer and nothing after it
    end_of_turn = tokenizer.convert_tokens_to_ids("<|eot|>")
    patched = PeftModel.from_pretrained(base.model, tmp_path / "out").eval()
    prompt = torch.tensor([encode_prompt(tokenizer, CHAT_QUESTION)])
    output = patched.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=[end_of_turn],
        pad_token_id=tokenizer.pad_token_id,
    )
    answer = output[0, prompt.shape[1] :].tolist()
    assert tokenizer.decode(answer) == "thirty days<|eot|>"


def test_reference_logps_cached_under_the_old_token_rule_are_not_reused(
    eot_chat_model_dir: Path, tmp_path: Path
) -> None:
    # What the engine wrote before the rule was versioned: the key had no rule in it. The pair
    # is planted under its current ids, the one case the ids alone could not tell apart.
    base = load_base(eot_chat_model_dir)
    [pair] = encode_pairs(base.tokenizer, CHAT_PAIRS, max_length=1024, max_prompt_length=512)
    namespace = f"{base.identity}|None|{next(base.model.parameters()).dtype}"
    old_key = hashlib.sha256(
        f"{namespace}|{pair.prompt_ids}|{pair.chosen_ids}|{pair.rejected_ids}".encode()
    ).hexdigest()
    config = _config(eot_chat_model_dir, tmp_path, epochs=1, early_stop=False)
    config.cache_dir().mkdir(parents=True)
    with sqlite3.connect(config.cache_dir() / "ref_logps.sqlite3") as db:
        db.execute("CREATE TABLE ref_logps (key TEXT PRIMARY KEY, chosen REAL, rejected REAL)")
        db.execute("INSERT INTO ref_logps VALUES (?, -1.0, -1.0)", (old_key,))

    result = train(config, pairs=CHAT_PAIRS, out_dir=tmp_path / "out", base=base)
    assert result.report["data"]["ref_cache_hits"] == 0
    [row] = result.report["pairs"]
    with torch.no_grad():
        fresh = pair_logps_concat(base.model, [pair], pad_id=base.tokenizer.pad_token_id)
    assert row["ref_logp_chosen"] == pytest.approx(fresh.chosen.item(), abs=1e-4)
    assert row["ref_logp_chosen"] != -1.0


def test_a_job_reads_the_tokenizer_once(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tokenizer read to size the job before the model loads is the one the job keeps (a
    large vocabulary's tokenizer takes a second or so to build)."""
    from transformers import AutoTokenizer

    from training.engine import modeling

    loads = []
    real = AutoTokenizer.from_pretrained

    def counted(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(modeling.AutoTokenizer, "from_pretrained", counted)
    train(_config(tiny_model_dir, tmp_path, epochs=1), pairs=PAIRS, out_dir=tmp_path / "out")
    assert len(loads) == 1
