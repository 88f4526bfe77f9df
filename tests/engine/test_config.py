"""Configs that cannot train, or whose adapter vLLM could not serve, are refused up front."""

from __future__ import annotations

import pytest

from training.engine import EngineError, TrainConfig, validate_config
from training.engine.config import check_vllm_servable


def test_defaults_are_valid_and_servable() -> None:
    config = TrainConfig(model="some/folder")
    validate_config(config)
    assert config.lora_r == 16 and config.target_modules == (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": ""}, "'model' must name a folder"),
        ({"loss": "kto"}, "'loss' must be one of sigmoid, ipo, hinge, robust"),
        ({"beta": 0}, "'beta' must be above 0"),
        ({"lora_r": 1024}, "LoRA rank 1024 cannot be served by vLLM"),
        ({"target_modules": ("q_proj", "lm_head")}, "LoRA on 'lm_head' cannot be served by vLLM"),
        ({"target_modules": ("embed_tokens",)}, "LoRA on 'embed_tokens' cannot be served"),
        ({"max_prompt_length": 2048}, "'max_prompt_length' must be at least 1 and below"),
        ({"batch_size": 0}, "'batch_size' must be at least 1"),
    ],
)
def test_bad_config_is_refused_with_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(EngineError, match=message.replace("(", r"\(")):
        validate_config(TrainConfig(**{"model": "m", **overrides}))


@pytest.mark.parametrize(
    ("adapter_config", "message"),
    [
        ({"r": 8, "target_modules": ["q_proj"], "use_dora": True}, "DoRA"),
        ({"r": 8, "target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"r": 8, "target_modules": ["q_proj"], "bias": "all"}, "bias must be 'none'"),
    ],
)
def test_adapter_configs_vllm_cannot_load_are_refused(adapter_config: dict, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        check_vllm_servable(adapter_config)


def test_job_config_from_json_names_unknown_keys() -> None:
    config = TrainConfig.from_dict({"model": "m", "lora_r": 8, "target_modules": ["q_proj"]})
    assert config.target_modules == ("q_proj",) and config.lora_r == 8
    with pytest.raises(EngineError, match="unknown key 'learning_rate'"):
        TrainConfig.from_dict({"model": "m", "learning_rate": 1e-3})
