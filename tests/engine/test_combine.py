"""Two LoRA adapters written as one: the combined adapter must change the model exactly as
the two applied together do, and loaders (peft here, vLLM by its rules) must accept it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from training.engine import EngineError
from training.engine.config import vllm_max_lora_rank
from training.engine.lora import combine_adapters


def _random_adapter(model_dir: Path, folder: Path, seed: int, **lora) -> Path:
    torch.manual_seed(seed)
    config = LoraConfig(**lora)
    config.init_lora_weights = False  # random A and B: the adapter really changes the model
    get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config).save_pretrained(folder)
    return folder


def _logits(model_dir: Path, *adapters: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapters:
        model = PeftModel.from_pretrained(model, adapters[0], adapter_name="a0")
        for index, folder in enumerate(adapters[1:], start=1):
            model.load_adapter(folder, adapter_name=f"a{index}")
        model.base_model.set_adapter([f"a{index}" for index in range(len(adapters))])
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 3]])
    with torch.no_grad():
        return model.eval()(ids).logits


def test_combined_adapter_equals_both_applied(tiny_model_dir: Path, tmp_path: Path) -> None:
    # different ranks, scalings (one rsLoRA) and layers, as a deployed adapter and a patch
    # made months apart would have
    first = _random_adapter(
        tiny_model_dir,
        tmp_path / "first",
        1,
        r=4,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
    )
    second = _random_adapter(
        tiny_model_dir,
        tmp_path / "second",
        2,
        r=8,
        lora_alpha=8,
        use_rslora=True,
        target_modules=["v_proj", "o_proj", "down_proj"],
    )
    combine_adapters([first, second], tmp_path / "combined")

    both = _logits(tiny_model_dir, first, second)
    assert not torch.allclose(both, _logits(tiny_model_dir, first), atol=1e-3)
    assert not torch.allclose(both, _logits(tiny_model_dir, second), atol=1e-3)
    combined = _logits(tiny_model_dir, tmp_path / "combined")
    torch.testing.assert_close(combined, both, atol=1e-5, rtol=1e-5)

    config = json.loads((tmp_path / "combined" / "adapter_config.json").read_text())
    assert config["r"] == 12 and config["lora_alpha"] == 12 and not config["use_rslora"]
    assert config["target_modules"] == ["down_proj", "o_proj", "q_proj", "v_proj"]
    tensors = load_file(tmp_path / "combined" / "adapter_model.safetensors")
    assert {tensor.shape[0] for name, tensor in tensors.items() if "lora_A" in name} == {12}
    assert {tensor.shape[1] for name, tensor in tensors.items() if "lora_B" in name} == {12}
    assert vllm_max_lora_rank(config["r"]) == 16


def test_adapters_that_are_more_than_lora_matrices_are_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    plain = _random_adapter(tiny_model_dir, tmp_path / "plain", 1, r=4, target_modules=["q_proj"])
    dora = _random_adapter(
        tiny_model_dir, tmp_path / "dora", 2, r=4, target_modules=["q_proj"], use_dora=True
    )
    with pytest.raises(EngineError, match="use_dora"):
        combine_adapters([plain, dora], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(EngineError, match="missing does not exist"):
        combine_adapters([plain, tmp_path / "missing"], tmp_path / "out")


@pytest.mark.parametrize(("rank", "flag"), [(1, 1), (4, 8), (16, 16), (20, 32), (300, 320)])
def test_vllm_max_lora_rank_is_a_value_vllm_takes(rank: int, flag: int) -> None:
    assert vllm_max_lora_rank(rank) == flag
