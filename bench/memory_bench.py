"""Peak RSS of a training job on the CPU: whole batches (what the engine did before the memory
plan) against the plan's choices, in full precision and in 4-bit.

    python bench/memory_bench.py                      # Llama-3.2-1B's shape, 8 pairs of 512/128
    python bench/memory_bench.py --hidden 256 --layers 4 --vocab 32000 --prompt 128 --answer 32

A random-init Llama (default: Llama-3.2-1B's shape: hidden 2048, 16 layers, 32 heads, 8 KV
heads, intermediate 8192, vocabulary 128,256, tied embeddings), float32, 8 pairs, batch 8, one
epoch of the engine's CLI, each run its own process, its peak RSS read from wait4 (the model is
built in a process of its own: see bench/_child.py). Rows:

- whole batch: ``--micro-batch-size 8 --no-gradient-checkpointing`` (one forward per step, as
  before the memory plan);
- the plan for weights + 3 GiB: ``--max-memory`` set to the weights' size plus 3 GiB;
- the plan in 4-bit for half that (``--quantize 4bit``).

The target (issue 11): the plan's row at most the weights + 3 GiB, the 4-bit row at most half
of that. At the default size a run does about 10^14 floating-point operations: an hour or more
on a two-core machine, so use the flags to scale it down there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._child import call_in_child  # noqa: E402
from bench._word_tokenizer import save_word_tokenizer  # noqa: E402

GIB = 2**30


def build(
    folder: str, *, vocab: int, hidden: int, layers: int, heads: int, kv_heads: int,
    intermediate: int | None,
) -> int:  # fmt: skip
    """Write the model and a word-level tokenizer; returns the weights' bytes. Runs in a child
    process (``call_in_child``), so that this one never holds the model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads,
        intermediate_size=intermediate or 4 * hidden, tie_word_embeddings=True,
        max_position_embeddings=2048, bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )  # fmt: skip
    save_word_tokenizer(Path(folder), vocab)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def run(model: Path, pairs: Path, out: Path, flags: list[str]) -> dict:
    """The engine's CLI as its own process: wall time, peak RSS (wait4) and the printed plan."""
    command = [sys.executable, "-m", "training.engine", "train", "--model", str(model),
               "--pairs", str(pairs), "--out", str(out), "--epochs", "1", "--batch-size", "8",
               "--retain-weight", "0", *flags]  # fmt: skip
    logs = out.with_suffix(".log")
    started = time.perf_counter()
    with logs.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    output = logs.read_text().splitlines()
    plan = next((line for line in output if line.startswith("memory plan:")), "")
    report = out / "report.json"
    estimate = None
    if report.exists():
        estimate = json.loads(report.read_text())["memory_plan"]["estimate_bytes"]
    return {
        "returncode": os.waitstatus_to_exitcode(status),
        "wall_s": wall,
        "peak_rss": usage.ru_maxrss * 1024,
        "plan": plan.removeprefix("memory plan: "),
        "estimate_bytes": estimate,
        "error": output[-1] if output and status else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--answer", type=int, default=128)
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=["whole", "plan", "4bit"],
        default=["whole", "plan", "4bit"],
        help="which runs (the whole batch may not fit in RAM at the default size)",
    )
    args = parser.parse_args()

    from bench.gpu_bench import make_pairs

    with tempfile.TemporaryDirectory() as tmp:
        folder, pairs_file = Path(tmp) / "model", Path(tmp) / "pairs.jsonl"
        shape = {name: getattr(args, name) for name in
                 ("vocab", "hidden", "layers", "heads", "kv_heads", "intermediate")}  # fmt: skip
        weights = call_in_child("bench.memory_bench:build", folder=str(folder), **shape)
        pairs = make_pairs(8, args.prompt, args.answer, args.vocab)
        pairs_file.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
        budget = weights + 3 * GIB
        rows = []
        runs = [
            ("whole", "whole batch, no checkpointing", ["--micro-batch-size", "8",
                                                        "--no-gradient-checkpointing"]),
            ("plan", "the plan for weights + 3 GiB", ["--max-memory", f"{budget / GIB:.3f}"]),
            ("4bit", "the plan, 4-bit, for half that",
             ["--quantize", "4bit", "--max-memory", f"{budget / 2 / GIB:.3f}"]),
        ]  # fmt: skip
        runs = [(name, flags) for row, name, flags in runs if row in args.rows]
        for number, (name, flags) in enumerate(runs):
            result = run(folder, pairs_file, Path(tmp) / f"out{number}", flags)
            rows.append((name, result))
            print(f"# {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    print(f"weights {weights / GIB:.2f} GiB (float32); target: plan <= {budget / GIB:.2f} GiB, "
          f"4-bit <= {budget / 2 / GIB:.2f} GiB")  # fmt: skip
    print("| run | peak RSS GiB | plan's estimate GiB | wall s | plan |")
    print("|---|---|---|---|---|")
    for name, result in rows:
        peak = f"{result['peak_rss'] / GIB:.2f}" if result["returncode"] == 0 else "failed"
        estimate = result["estimate_bytes"]
        print(f"| {name} | {peak} | {estimate / GIB if estimate else float('nan'):.2f} | "
              f"{result['wall_s']:.0f} | {result['plan'] or result['error']} |")  # fmt: skip


if __name__ == "__main__":
    main()
