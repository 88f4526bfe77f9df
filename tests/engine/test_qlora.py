"""QLoRA: the patch learns on a 4-bit NF4 base and is served on the full-precision one.

bitsandbytes runs 4-bit layers on the CPU too, so this runs in CI (the [qlora] extra is part
of what ``make test`` installs); it is skipped only where bitsandbytes cannot be imported.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from tests.engine.conftest import build_tiny_model
from tests.engine.test_train import EVAL, PAIRS, _config
from training.engine import TrainConfig, load_base, train
from training.engine.checks import verdict
from training.engine.data import encode_pairs
from training.engine.evaluate import generate_greedy
from training.engine.logprobs import pair_logps
from training.engine.modeling import eval_mode, nf4_config

bnb = pytest.importorskip("bitsandbytes")


def _dequantized_copy(quantized: torch.nn.Module, model_dir: Path) -> torch.nn.Module:
    """The full-precision model whose linear layers hold exactly the 4-bit weights."""
    full = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    layers = dict(quantized.named_modules())
    for name, module in full.named_modules():
        source = layers.get(name)
        if isinstance(source, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(source.weight.data, source.weight.quant_state)
            module.weight.data = weight.to(torch.float32).reshape(module.weight.shape)
    return full.requires_grad_(False)


def _lora_gradients(model: torch.nn.Module, encoded, pad_id: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    config.init_lora_weights = False
    peft_model = get_peft_model(model, config)
    with torch.inference_mode():  # the reference pass runs first, as in training
        pair_logps(peft_model, encoded, pad_id=pad_id, prefix_sharing=True)
    out = pair_logps(peft_model, encoded, pad_id=pad_id, prefix_sharing=True)
    (out.chosen.sum() - 0.5 * out.rejected.sum()).backward()
    grads = {
        name.replace(".default", ""): param.grad.clone()
        for name, param in peft_model.named_parameters()
        if param.requires_grad
    }
    peft_model.unload()
    return grads


def test_gradients_through_the_4bit_base_are_those_of_its_dequantized_weights(
    tiny_model_dir: Path,
) -> None:
    """Every LoRA layer's gradient, the first block's included (its path back runs through
    the 4-bit layers above it), equals the one computed on the dequantized weights."""
    base = load_base(tiny_model_dir, quantize="4bit")
    assert base.precision == "4bit NF4 (compute float32)"
    encoded = encode_pairs(base.tokenizer, PAIRS, max_length=256, max_prompt_length=128)
    pad_id = base.tokenizer.pad_token_id
    full = _dequantized_copy(base.model, tiny_model_dir)
    quantized_grads = _lora_gradients(base.model, encoded, pad_id)
    full_grads = _lora_gradients(full, encoded, pad_id)
    assert quantized_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(quantized_grads[name], grad, atol=1e-4, rtol=1e-3, msg=name)


def test_4bit_training_reports_it_and_serves_on_the_full_base(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "patch"
    result = train(
        _config(tiny_model_dir, tmp_path, quantize="4bit", epochs=2),
        pairs=PAIRS,
        out_dir=out,
        eval_items=EVAL,
    )
    report = json.loads((out / "report.json").read_text())
    assert report["precision"] == {
        "base_in_training": "4bit NF4 (compute float32)",
        "base_quantized_in_training": True,
        "eval": "4bit NF4 (compute float32)",
    }
    assert report["memory_plan"]["quantize"] == "4bit"
    assert "4-bit base" in report["memory_plan"]["summary"]
    assert report["config"]["quantize"] == "4bit"
    assert result.metrics["rewards/margins"][-1] > 0

    # the adapter is plain LoRA on the full-precision base, as vLLM and peft serve it
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    served = PeftModel.from_pretrained(full, out).eval()
    base = load_base(tiny_model_dir)
    encoded = encode_pairs(base.tokenizer, PAIRS, max_length=256, max_prompt_length=128)
    with torch.no_grad():
        before = pair_logps(base.model, encoded, pad_id=0, prefix_sharing=False)
        after = pair_logps(served, encoded, pad_id=0, prefix_sharing=False)
    assert ((after.chosen - after.rejected) > (before.chosen - before.rejected)).all()


def test_4bit_patch_stacks_on_a_deployed_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    train(_config(tiny_model_dir, tmp_path, epochs=1), pairs=PAIRS, out_dir=tmp_path / "deployed")
    result = train(
        _config(
            tiny_model_dir, tmp_path, epochs=1, quantize="4bit", adapter=str(tmp_path / "deployed")
        ),
        pairs=PAIRS,
        out_dir=tmp_path / "patch",
    )
    stacked = result.report["stacked_on_adapter"]
    assert stacked["combined"] == "combined" and stacked["combined_rank"] == 32
    assert (tmp_path / "patch" / "combined" / "adapter_model.safetensors").is_file()
    # the reference was the 4-bit base with the deployed adapter: not the full-precision one
    assert result.report["precision"]["base_quantized_in_training"]


def test_a_loaded_base_of_other_precision_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from training.engine import EngineError

    with pytest.raises(EngineError, match="the base model in memory is float32"):
        train(
            _config(tiny_model_dir, tmp_path, quantize="4bit"),
            pairs=PAIRS,
            out_dir=tmp_path / "out",
            base=load_base(tiny_model_dir),
        )


@pytest.mark.slow
def test_demo_patch_trained_in_4bit_works_on_the_full_precision_base(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    scenario = demo_model_dir / "scenario"
    pairs = [json.loads(x) for x in (scenario / "pairs.jsonl").read_text().splitlines() if x]
    items = [json.loads(x) for x in (scenario / "eval.jsonl").read_text().splitlines() if x]
    config = TrainConfig(
        model=str(demo_model_dir), quantize="4bit", ref_cache_dir=str(tmp_path / "cache")
    )
    result = train(config, pairs=pairs, out_dir=tmp_path / "patch", eval_items=items)
    assert result.report["precision"]["base_quantized_in_training"]

    base = load_base(demo_model_dir)
    flagged = [item for item in items if item["kind"] == "flagged"]
    regression = [item for item in items if item["kind"] == "regression"]
    prompts = [item["prompt"] for item in flagged + regression]
    before = generate_greedy(base, base.tokenizer, prompts, config.max_new_tokens)
    served = PeftModel.from_pretrained(base.model, tmp_path / "patch").eval()
    after = generate_greedy(served, base.tokenizer, prompts, config.max_new_tokens)
    fixed = [
        verdict(
            answer,
            expected=item.get("expected"),
            must_include=item.get("must_include"),
            must_not_include=item.get("must_not_include"),
        ).passed
        for answer, item in zip(after, flagged, strict=False)
    ]
    assert all(fixed), list(zip(after, flagged, strict=False))
    assert after[len(flagged) :] == before[len(flagged) :]


def _resident_kib(file: Path) -> int:
    """KiB of ``file`` resident in this process's maps of it (/proc/self/smaps)."""
    target, total, inside = str(file.resolve()), 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(target)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's madvise and smaps")
def test_a_4bit_base_on_the_cpu_holds_no_float_layers_of_its_checkpoint(tmp_path: Path) -> None:
    """transformers quantizes from a map of the checkpoint that the kept embeddings hold open:
    the float32 layers it read stayed in the process (more memory than the full base)."""
    folder = build_tiny_model(tmp_path / "model", hidden=256, layers=4)
    checkpoint = folder / "model.safetensors"
    base = load_base(folder, quantize="4bit")
    held = _resident_kib(checkpoint)
    plain = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, quantization_config=nf4_config("4bit", torch.float32)
    )
    held_by_plain = _resident_kib(checkpoint) - held
    layers_kib = (
        sum(
            p.numel() * 4
            for n, p in plain.named_parameters()
            if ".layers." in n and "norm" not in n
        )
        // 1024
    )  # in float32, as in the checkpoint
    assert held_by_plain > layers_kib / 2, "what a plain 4-bit load keeps"
    assert held < layers_kib / 20
    eval_mode(plain)
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.no_grad():  # the weights read again from the file where still in use
        assert torch.equal(base.model(ids).logits, plain(ids).logits)
