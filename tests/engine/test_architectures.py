"""The engine on decoder architectures other than Llama: each names its linear layers its own
way (fused qkv_proj, GPT-2's Conv1D c_attn, GPT-NeoX's query_key_value), and the patch must
land on all of them and still do its job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
)

from tests.engine.conftest import build_tiny_tokenizer
from tests.engine.test_train import PAIRS, _logps
from training.engine import EngineError, TrainConfig, train

SIZE = {"num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 256}
ARCHITECTURES = {
    "gpt2": (
        GPT2LMHeadModel,
        lambda: GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256),
        {"c_attn", "c_proj", "c_fc"},
    ),
    "gpt_neox": (
        GPTNeoXForCausalLM,
        lambda: GPTNeoXConfig(hidden_size=32, intermediate_size=64, **SIZE),
        {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},
    ),
    "phi3": (
        Phi3ForCausalLM,
        lambda: Phi3Config(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **SIZE),
        {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    ),
    "opt": (
        OPTForCausalLM,
        lambda: OPTConfig(hidden_size=32, ffn_dim=64, word_embed_proj_dim=32, **SIZE),
        {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
    ),
}


def _build(name: str, folder: Path) -> Path:
    model_class, make_config, _ = ARCHITECTURES[name]
    tokenizer = build_tiny_tokenizer()
    config = make_config()
    config.vocab_size = len(tokenizer)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.initializer_range = 0.2  # as the Llama fixture: logits a LoRA can move quickly
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_the_patch_covers_every_linear_layer_and_learns(name: str, tmp_path: Path) -> None:
    model_dir = _build(name, tmp_path / name)
    config = TrainConfig(
        model=str(model_dir), epochs=4, lr=5e-3, max_new_tokens=4, ref_cache_dir=str(tmp_path)
    )
    result = train(config, pairs=PAIRS, out_dir=tmp_path / "out")

    expected = ARCHITECTURES[name][2]
    adapter_config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == expected
    assert set(result.report["config"]["target_modules"]) == expected
    rows = result.report["pairs"]
    for row in rows:  # DPO widened every pair's margin over the reference
        policy = row["policy_logp_chosen"] - row["policy_logp_rejected"]
        assert policy > row["ref_logp_chosen"] - row["ref_logp_rejected"]

    # the written adapter, loaded as users load it, is the model that was reported
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = build_tiny_tokenizer()
    patched = PeftModel.from_pretrained(base, tmp_path / "out").eval()
    chosen, _ = _logps(patched, tokenizer, PAIRS)
    assert chosen == pytest.approx([row["policy_logp_chosen"] for row in rows], abs=1e-4)


def test_named_targets_the_model_lacks_are_refused_with_its_layer_names(tmp_path: Path) -> None:
    model_dir = _build("gpt_neox", tmp_path / "neox")
    config = TrainConfig(model=str(model_dir), target_modules=("q_proj", "v_proj"))
    with pytest.raises(EngineError, match=r"none of target_modules.*dense, dense_4h_to_h"):
        train(config, pairs=PAIRS, out_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "adapter_config.json").exists()
