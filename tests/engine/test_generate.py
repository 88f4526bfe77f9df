"""Candidate sampling on a tiny random model: distinct, reproducible, and the base left clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from training.engine.__main__ import main
from training.engine.errors import Cancelled
from training.engine.generate import sample_candidates
from training.engine.modeling import load_base

PROMPTS = [
    "how long does shipping take",
    "what is the refund window",
    [{"role": "user", "content": "does the warranty cover parts"}],
]


@pytest.fixture(scope="module")
def base(tiny_model_dir: Path):
    return load_base(tiny_model_dir)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with non-zero weights, so sampling with it differs from the base."""
    model = load_base(tiny_model_dir).model
    torch.manual_seed(1)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


def test_each_prompt_gets_n_distinct_candidates(base):
    candidates = sample_candidates(base, PROMPTS, n=4, max_new_tokens=12, temperature=1.0)
    assert len(candidates) == len(PROMPTS)
    for answers in candidates:
        assert len(answers) == 4
        assert len(set(answers)) == 4


def test_same_seed_same_candidates_whatever_the_batching(base):
    first = sample_candidates(base, PROMPTS, n=3, max_new_tokens=12, seed=7, batch_size=16)
    one_at_a_time = sample_candidates(base, PROMPTS, n=3, max_new_tokens=12, seed=7, batch_size=1)
    alone = sample_candidates(base, PROMPTS[1:2], n=3, max_new_tokens=12, seed=7)
    assert first == one_at_a_time
    assert alone == first[1:2]


def test_another_seed_gives_other_candidates(base):
    first = sample_candidates(base, PROMPTS, n=3, max_new_tokens=12, seed=7)
    other = sample_candidates(base, PROMPTS, n=3, max_new_tokens=12, seed=8)
    assert first != other


def test_duplicates_and_existing_answers_are_dropped(base):
    # A temperature this low makes every sample the greedy answer: one survives, the rest are
    # repeats; offered as an existing answer, it is not proposed again.
    [answers] = sample_candidates(base, PROMPTS[:1], n=4, temperature=1e-4, max_new_tokens=8)
    assert len(answers) == 1
    [again] = sample_candidates(
        base, PROMPTS[:1], n=4, temperature=1e-4, max_new_tokens=8, existing=[answers]
    )
    assert again == []


def test_adapter_changes_the_answers_and_leaves_the_base_as_it_was(base, adapter_dir):
    weights_before = {name: p.clone() for name, p in base.model.state_dict().items()}
    modules_before = [name for name, _ in base.model.named_modules()]
    plain = sample_candidates(base, PROMPTS, n=2, max_new_tokens=12)
    patched = sample_candidates(base, PROMPTS, n=2, max_new_tokens=12, adapter=str(adapter_dir))
    assert patched != plain
    assert [name for name, _ in base.model.named_modules()] == modules_before
    assert not hasattr(base.model, "peft_config")
    for name, param in base.model.state_dict().items():
        assert torch.equal(param, weights_before[name]), name
    assert sample_candidates(base, PROMPTS, n=2, max_new_tokens=12) == plain


def test_progress_is_reported_per_batch(base):
    seen = []
    sample_candidates(base, PROMPTS, n=2, max_new_tokens=4, batch_size=2, on_progress=seen.append)
    assert [p["step"] for p in seen] == [0, 1, 2, 3]
    assert {p["total"] for p in seen} == {3}


def test_cancel_stops_between_passes(base):
    passes = []

    def cancel_after_two_passes() -> bool:
        passes.append(1)
        return len(passes) > 2

    with pytest.raises(Cancelled, match="after 2 of 3 prompts"):
        sample_candidates(
            base,
            PROMPTS,
            n=2,
            max_new_tokens=4,
            batch_size=2,
            should_cancel=cancel_after_two_passes,
        )
    assert not hasattr(base.model, "peft_config")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_cli_writes_one_line_per_prompt(tiny_model_dir, tmp_path, capsys):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"id": "case-1", "prompt": PROMPTS[0]}, {"prompt": PROMPTS[2]}],
    )
    out = tmp_path / "candidates.jsonl"
    code = main(
        ["generate", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--n", "3"]
        + ["--out", str(out), "--max-new-tokens", "8", "--temperature", "1.0"]
    )
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row.get("id") for row in rows] == ["case-1", None]
    assert rows[1]["prompt"] == PROMPTS[2]
    assert all(len(row["candidates"]) == 3 for row in rows)
    assert "wrote 6 candidates for 2 prompts" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ('{"prompt": "hi"}\nnot json\n', [], "line 2: not valid JSON"),
        ("", [], "is empty"),
        ('{"question": "hi"}\n', [], "line 1: missing field 'prompt'"),
        ('{"prompt": 3}\n', [], "line 1: field 'prompt' must be a string or a list of messages"),
        ('{"prompt": "hi"}\n', ["--n", "0"], "n must be at least 1"),
        ('{"prompt": "hi"}\n', ["--temperature", "0"], "temperature must be above 0"),
        ('{"prompt": "hi"}\n', ["--model", "no-such-model"], "no-such-model does not exist"),
        ('{"prompt": "hi"}\n', ["--adapter", "no-such-adapter"], "no-such-adapter does not exist"),
        ('{"prompt": "hi"}\n', ["--out", "."], "it is a folder"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    tiny_model_dir, tmp_path, capsys, content, extra, message
):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(content)
    out = tmp_path / "candidates.jsonl"
    args = ["generate", "--model", str(tiny_model_dir), "--prompts", str(prompts)]
    code = main(args + ["--out", str(out)] + extra)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
