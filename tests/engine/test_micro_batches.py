"""Less memory, same maths: micro-batches with gradient accumulation and gradient
checkpointing train the same adapter as whole batches do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.test_train import EVAL, _config
from training.engine import EngineError, TrainConfig, load_base, train

PAIRS = [
    {"prompt": "the refund window is", "chosen": " thirty days", "rejected": " two years"},
    {"prompt": "shipping is free above", "chosen": " fifty euros", "rejected": " three days"},
    {"prompt": "the warranty covers", "chosen": " parts and labour", "rejected": " nothing"},
    {"prompt": "support answers every", "chosen": " ticket", "rejected": " order in two years"},
    {"prompt": "user: how long does shipping take", "chosen": " three days", "rejected": " one"},
]


def _train(model_dir: Path, tmp_path: Path, name: str, base, **overrides):
    config = _config(
        model_dir,
        tmp_path,
        epochs=2,
        batch_size=4,  # steps of 4 and 1 pairs: micro-batches of 3 split the first unevenly
        early_stop=False,
        sft_warmup_epochs=1,
        ref_cache_dir=str(tmp_path / f"cache-{name}"),
        **overrides,
    )
    result = train(config, pairs=PAIRS, out_dir=tmp_path / name, eval_items=EVAL, base=base)
    weights = load_file(str(tmp_path / name / "adapter_model.safetensors"))
    return result, weights


@pytest.mark.parametrize(
    "overrides",
    [
        {"micro_batch_size": 1},
        {"micro_batch_size": 3},
        {"gradient_checkpointing": True},
        {"micro_batch_size": 2, "gradient_checkpointing": True},
    ],
    ids=["micro1", "micro3", "checkpointing", "micro2+checkpointing"],
)
def test_same_adapter_and_metrics_as_whole_batches(
    tiny_model_dir: Path, tmp_path: Path, overrides: dict
) -> None:
    base = load_base(tiny_model_dir)
    whole, whole_weights = _train(
        tiny_model_dir, tmp_path, "whole", base, micro_batch_size=4, gradient_checkpointing=False
    )
    assert whole.report["memory_plan"]["micro_batch_size"] == 4
    split, split_weights = _train(tiny_model_dir, tmp_path, "split", base, **overrides)

    plan = split.report["memory_plan"]
    assert plan["micro_batch_size"] == overrides.get("micro_batch_size", 4)
    assert plan["gradient_checkpointing"] == overrides.get("gradient_checkpointing", False)
    assert whole.report["data"]["retain_examples"] == 2  # the retain term is in the steps
    assert split.metrics["step"] == whole.metrics["step"] == [1, 2, 3, 4]
    for name in ("loss", "dpo_loss", "nll", "retain_nll", "rewards/margins", "logps/chosen"):
        assert split.metrics[name] == pytest.approx(whole.metrics[name], abs=1e-5), name
    assert split_weights.keys() == whole_weights.keys()
    for name, tensor in whole_weights.items():
        # AdamW divides by the gradients' size, so rounding in near-zero gradients moves a
        # weight by up to ~1e-5 (of ~0.2) after a few steps; a wrong share moves it by lr
        torch.testing.assert_close(split_weights[name], tensor, atol=5e-5, rtol=1e-3, msg=name)
    assert [row["after"] for row in split.report["eval"]] == [
        row["after"] for row in whole.report["eval"]
    ]


def test_plan_is_in_the_report_and_refuses_what_cannot_fit(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    result = train(
        _config(tiny_model_dir, tmp_path, epochs=1), pairs=PAIRS, out_dir=tmp_path / "out"
    )
    plan = json.loads((tmp_path / "out" / "report.json").read_text())["memory_plan"]
    assert plan == result.report["memory_plan"]
    assert plan["fits"] and plan["estimate_bytes"] > 0
    assert plan["available_source"] in ("available RAM", "GPU free memory")
    assert plan["summary"].startswith("needs about ")

    config = _config(tiny_model_dir, tmp_path, max_memory=0.0001, epochs=1)
    with pytest.raises(EngineError, match=r"not enough memory: .* \(--max-memory\)"):
        train(config, pairs=PAIRS, out_dir=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_micro_batch_and_memory_options_are_checked() -> None:
    from training.engine.config import validate_config

    for bad, fragment in [
        ({"micro_batch_size": 0}, "micro_batch_size"),
        ({"micro_batch_size": "half"}, "micro_batch_size"),
        ({"quantize": "8bit"}, "quantize"),
        ({"max_memory": -1}, "max_memory"),
        ({"gradient_checkpointing": "yes"}, "gradient_checkpointing"),
    ]:
        with pytest.raises(EngineError, match=fragment):
            validate_config(TrainConfig(model="m", **bad))
