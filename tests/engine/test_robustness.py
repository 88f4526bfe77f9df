"""Models and inputs the engine was not built around: each fails in one clear line, before
anything is written, or works."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig

from tests.engine.conftest import build_tiny_model, build_tiny_tokenizer
from tests.engine.test_train import EVAL, PAIRS
from training.engine import EngineError, TrainConfig, load_base, train
from training.engine.evaluate import end_token_ids
from training.engine.modeling import model_identity


def _config(model_dir: Path, tmp_path: Path, **overrides) -> TrainConfig:
    values = {
        "model": str(model_dir),
        "epochs": 2,
        "max_new_tokens": 4,
        "ref_cache_dir": str(tmp_path),
    }
    return TrainConfig(**{**values, **overrides})


def test_a_run_that_diverges_fails_instead_of_shipping_nan(tiny_model_dir: Path, tmp_path: Path):
    with pytest.raises(EngineError, match="training diverged at step"):
        train(_config(tiny_model_dir, tmp_path, lr=1e6), pairs=PAIRS, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    for name in ("lr", "beta"):
        with pytest.raises(EngineError, match=f"'{name}' must be a finite number"):
            train(
                _config(tiny_model_dir, tmp_path, **{name: float("inf")}),
                pairs=PAIRS,
                out_dir=tmp_path,
            )


def test_output_folders_that_cannot_be_written_are_refused_first(
    tiny_model_dir: Path, tmp_path: Path
):
    (tmp_path / "a_file").write_text("x")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "sub"):
        with pytest.raises(EngineError, match="is a file, not a folder"):
            train(_config(tiny_model_dir, tmp_path), pairs=PAIRS, out_dir=out)
    deployed = tmp_path / "deployed"
    train(_config(tiny_model_dir, tmp_path, epochs=1), pairs=PAIRS, out_dir=deployed)
    # readable by a server running as another user (safetensors alone writes 0600)
    assert (deployed / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o644
    before = (deployed / "adapter_model.safetensors").read_bytes()
    with pytest.raises(EngineError, match="is the deployed adapter's folder"):
        train(
            _config(tiny_model_dir, tmp_path, adapter=str(deployed)), pairs=PAIRS, out_dir=deployed
        )
    assert (deployed / "adapter_model.safetensors").read_bytes() == before


def test_an_adapter_of_another_model_is_refused(tiny_model_dir: Path, tmp_path: Path):
    other = build_tiny_model(tmp_path / "other", layers=3)
    train(_config(other, tmp_path, epochs=1), pairs=PAIRS, out_dir=tmp_path / "foreign")
    config = _config(tiny_model_dir, tmp_path, adapter=str(tmp_path / "foreign"))
    with pytest.raises(EngineError, match=r"layer\(s\) that .* lacks .*layers\.2\..*another model"):
        train(config, pairs=PAIRS, out_dir=tmp_path / "out")


def test_a_chat_template_that_refuses_a_prompt_is_one_line(tmp_path: Path):
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    model_dir = build_tiny_model(tmp_path / "strict")
    tokenizer.save_pretrained(model_dir)
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    pairs = [{"prompt": prompt, "chosen": "hello", "rejected": "go away"}]
    with pytest.raises(
        EngineError, match="chat template refuses a prompt with roles system/user: System role"
    ):
        train(_config(model_dir, tmp_path), pairs=pairs, out_dir=tmp_path / "out")


def test_a_small_context_and_a_pad_token_the_model_lacks(tmp_path: Path):
    # GPT-2 style: 32 positions, and a [PAD] added to the tokenizer but not to the model
    tokenizer = build_tiny_tokenizer()
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=32, vocab_size=len(tokenizer))
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    tokenizer.save_pretrained(tmp_path / "gpt2")
    long = " ".join(["the refund window is thirty days"] * 20)
    pairs = [{"prompt": long, "chosen": long, "rejected": "no"}, *PAIRS]
    evals = [*EVAL, {"prompt": long, "kind": "regression"}]
    config = _config(tmp_path / "gpt2", tmp_path, max_new_tokens=64)
    result = train(config, pairs=pairs, out_dir=tmp_path / "out", eval_items=evals)
    assert result.report["data"]["truncated_pairs"] == 1
    assert len(result.report["eval"]) == len(evals)


def test_identity_changes_when_a_lora_is_merged_into_the_weights(tmp_path: Path):
    # 20 MB where the first, middle and last MiB (what identity hashed before) hold only
    # embeddings, norms and q/v weights: the merged layers lie between them
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path / "base")
    lora = LoraConfig(r=4, target_modules=["k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    lora.init_lora_weights = False
    get_peft_model(model, lora).merge_and_unload().save_pretrained(tmp_path / "merged")
    assert model_identity(tmp_path / "base") != model_identity(tmp_path / "merged")


def test_answers_end_at_the_generation_configs_end_of_turn_too(
    tiny_model_dir: Path, tmp_path: Path
):
    base = load_base(tiny_model_dir)
    assert end_token_ids(base.model, base.tokenizer) == {base.tokenizer.eos_token_id}
    base.model.generation_config.eos_token_id = [base.tokenizer.eos_token_id, 7]
    assert end_token_ids(base.model, base.tokenizer) == {base.tokenizer.eos_token_id, 7}


def test_answers_end_at_the_chat_templates_end_of_turn_even_if_the_config_omits_it(
    eot_chat_model_dir: Path,
):
    base = load_base(eot_chat_model_dir)
    eos, end_of_turn = base.tokenizer.eos_token_id, base.tokenizer.convert_tokens_to_ids("<|eot|>")
    base.model.generation_config.eos_token_id = eos
    assert end_token_ids(base.model, base.tokenizer) == {eos, end_of_turn}
