"""How far regression answers drift under a patch: the numbers behind ``drift_tolerance``.

    python bench/drift_bench.py DEMO_MODEL_DIR [--markdown]

DEMO_MODEL_DIR is a folder ``python -m training.engine demo --out DIR`` wrote. Two patches on
its scenario (3 flagged pairs, 40 regression prompts):

- ``default``: the engine's defaults (retain term on, early stopping);
- ``harsh``: no retain term, no early stopping, a high learning rate, so that answers do break.

For each, the regression prompts' drift (change of the mean per-token log-prob of the
pre-patch answer, nats) among the answers that stayed identical and among those that changed,
and every changed answer with its drift, so that rewordings and wrong facts can be told apart
by eye: the default tolerance should sit below what a broken answer moves (identical answers
never count as changed, whatever their drift).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

RUNS = {
    "default": {},
    "harsh": {"retain_weight": 0.0, "early_stop": False, "epochs": 12, "lr": 5e-3},
}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _spread(values: list[float]) -> str:
    if not values:
        return "–"
    values = sorted(abs(v) for v in values)
    return f"{values[0]:.3f} / {statistics.median(values):.3f} / {values[-1]:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="demo model folder (with scenario/)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    from training.engine import TrainConfig, train
    from training.engine.checks import DEFAULT_DRIFT_TOLERANCE

    pairs = _read(args.model / "scenario" / "pairs.jsonl")
    eval_items = _read(args.model / "scenario" / "eval.jsonl")
    summary, changed_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in RUNS.items():
            config = TrainConfig(model=str(args.model), ref_cache_dir=f"{tmp}/cache", **overrides)
            started = time.perf_counter()
            result = train(config, pairs=pairs, out_dir=Path(tmp) / name, eval_items=eval_items)
            seconds = time.perf_counter() - started
            rows = [row for row in result.report["eval"] if row["kind"] == "regression"]
            same = [row["drift"] for row in rows if row["identical"]]
            moved = [row for row in rows if not row["identical"]]
            flagged = result.report["summary"]["flagged"]
            summary.append(
                (name, len(rows), len(same), _spread(same), len(moved),
                 _spread([row["drift"] for row in moved]),
                 sum(row["changed"] for row in rows), f"{flagged['fixed']}/{flagged['total']}",
                 result.stopped_epoch, seconds)
            )  # fmt: skip
            changed_rows += [(name, row) for row in moved]
    header = ("patch", "regression", "identical", "|drift| identical (min/median/max)",
              "differ", "|drift| differ (min/median/max)",
              f"changed at {DEFAULT_DRIFT_TOLERANCE}", "flagged fixed", "epochs",
              "seconds")  # fmt: skip
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in summary:
            print("| " + " | ".join(f"{v:.0f}" if isinstance(v, float) else str(v) for v in row)
                  + " |")  # fmt: skip
        print()
        print("| patch | before | after | drift |")
        print("|---|---|---|---|")
        for name, row in changed_rows:
            print(f"| {name} | {row['before']} | {row['after']} | {row['drift']:+.3f} |")
    else:
        for row in summary:
            print(dict(zip(header, row, strict=True)))
        for name, row in changed_rows:
            print(f"{name}: {row['before']!r} -> {row['after']!r} drift {row['drift']:+.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
