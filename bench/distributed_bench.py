"""One process against two (torchrun, gloo, CPU) for the same global batch, on the demo model.

    .venv/bin/python bench/distributed_bench.py --model DEMO_DIR [--pairs 32] [--runs 1]

DEMO_DIR is a folder ``python -m training.engine demo --out DEMO_DIR`` wrote. The demo's pairs
are repeated to ``--pairs`` (a fixed amount of work), trained for ``--epochs`` without early
stopping (no eval file), each run with an empty reference cache. Rows:

- 1 process, 2 threads: all of the machine's 2 cores in one process (intra-op threads);
- 1 process, 1 thread;
- 2 processes, 1 thread each: torchrun --nproc-per-node 2, the global batch split in two;
- 2 processes, base sharded: the same with ``--shard-base`` (FSDP2: each process holds half
  of the base's blocks and gathers each block from the other for every pass).

"wall s" is the whole command (Python start, imports, model load, reference pass, training,
saving); "reference s" and "train s" come from report.json's timings (rank 0's). The issue's
target: 2 processes at most 1.2x the one-process wall time on a 2-core machine. On GPUs, each
process has its own device and the split is where the speed comes from; that figure needs a
machine with several GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], *, threads: int, work: Path, name: str) -> dict[str, float]:
    out = work / name
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": str(threads),
        "PATCHWISE_CACHE_DIR": str(work / f"cache-{name}"),
    }
    started = time.perf_counter()
    done = subprocess.run([*command, "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True)  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    timings = json.loads((out / "report.json").read_text())["timings"]
    shutil.rmtree(out)
    return {"wall_s": wall, "reference_s": timings["reference_s"], "train_s": timings["train_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="distributed-bench-"))
    lines = (args.model / "scenario" / "pairs.jsonl").read_text().splitlines()
    rows = [line for line in lines if line.strip()]
    pairs = work / "pairs.jsonl"
    pairs.write_text("".join(rows[i % len(rows)] + "\n" for i in range(args.pairs)))
    engine = ["-m", "training.engine", "train", "--model", str(args.model), "--pairs", str(pairs),
              "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2"]  # fmt: skip
    setups = [
        ("1 process, 2 threads", [sys.executable, *engine], 2),
        ("1 process, 1 thread", [sys.executable, *engine], 1),
        ("2 processes, 1 thread each", [*torchrun, *engine], 1),
        ("2 processes, base sharded", [*torchrun, *engine, "--shard-base"], 1),
    ]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in setups}
    for attempt in range(args.runs):
        for number, (name, command, threads) in enumerate(setups):
            results[name].append(run(command, threads=threads, work=work,
                                     name=f"run{attempt}-{number}"))  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)

    best = {name: min(runs, key=lambda r: r["wall_s"]) for name, runs in results.items()}
    baseline = best["1 process, 2 threads"]["wall_s"]
    print(f"{args.pairs} pairs, global batch {args.batch_size}, {args.epochs} epochs, "
          f"best of {args.runs}")  # fmt: skip
    print("| setup | wall s | vs 1 process, 2 threads | reference s | train s |")
    print("|---|---|---|---|---|")
    for name, row in best.items():
        print(f"| {name} | {row['wall_s']:.1f} | {row['wall_s'] / baseline:.2f}x | "
              f"{row['reference_s']:.2f} | {row['train_s']:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
