"""The demo scenario end to end with the engine's defaults: what issue 4 promises a user."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.engine import TrainConfig, train

pytestmark = pytest.mark.slow


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_default_patch_fixes_flagged_and_heldout_and_keeps_regression(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    scenario = demo_model_dir / "scenario"
    pairs = _read(scenario / "pairs.jsonl")
    eval_items = _read(scenario / "eval.jsonl")
    config = TrainConfig(model=str(demo_model_dir), ref_cache_dir=str(tmp_path / "cache"))

    result = train(config, pairs=pairs, out_dir=tmp_path / "patch", eval_items=eval_items)

    summary = result.report["summary"]
    assert summary["flagged"]["fixed"] == summary["flagged"]["total"] > 0
    assert summary["heldout"]["fixed"] == summary["heldout"]["total"] > 0
    assert summary["regression"]["changed"] == 0
    assert result.stopped_reason == "all_flagged_fixed"
    assert result.stopped_epoch < config.epochs
    coverage = result.report["regression_coverage"]
    assert sum(coverage["by_topic"].values()) == summary["regression"]["total"]
