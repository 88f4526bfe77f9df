"""bench/gpu_bench.py waits for a GPU; its --tiny run shows on the CPU that it works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_bench_runs_every_setting_at_a_tiny_shape(tmp_path: Path) -> None:
    rows_file = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, "bench/gpu_bench.py", "--tiny", "--json", str(rows_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    settings = {row["setting"] for row in rows}
    assert {"bf16", "bf16 + checkpointing, --max-memory 22"} <= settings
    for row in rows:
        assert row["steps"] == 1 and row["peak_bytes"] > 0
        assert 0.5 < row["estimate_bytes"] / row["peak_bytes"]  # the plan's allowance included
    assert "| tiny | bf16 |" in done.stdout and "plan/peak" in done.stdout
