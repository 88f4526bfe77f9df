"""Candidate generation throughput: answers per second, batched against one at a time.

    python bench/generate_bench.py                      # builds the demo model first (~1 min)
    python bench/generate_bench.py --model DIR [--n 4] [--max-new-tokens 48] [--markdown]

Samples N answers for every prompt of the demo scenario's eval file (50 prompts, or the
``--prompts`` JSONL) with the sampling loop of ``sample_candidates`` at several batch sizes
(answers per forward pass); "one at a time" is one answer per pass. For reference, the last row
is transformers' own ``model.generate(do_sample=True)`` at 16 answers per pass, which cannot give
each answer its own seed. Time is sampling only (the model is loaded once, before); tokens count
every generated token, eos included. One torch thread by default (``--threads``): on a shared
2-core machine two threads spend most of their time waiting for each other.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

BATCH_SIZES = (1, 4, 16, 64)


def load_prompts(path: Path) -> list:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


def time_engine(base, prompts, *, n, max_new_tokens, batch_size) -> tuple[float, int, int]:
    """The sampling loop of ``sample_candidates``, with its batching (answers per pass, each
    with its own seed); decoding and dropping duplicates are left out, so every sampled answer
    counts (the demo model is so sure of itself that most of its samples are repeats)."""
    from training.engine.data import encode_prompt
    from training.engine.evaluate import end_token_ids
    from training.engine.generate import answer_seed, sample_answer_ids

    rows = [
        (encode_prompt(base.tokenizer, p), answer_seed(0, p, k)) for p in prompts for k in range(n)
    ]
    started, answers = time.perf_counter(), []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        answers += sample_answer_ids(
            base.model,
            [ids for ids, _ in batch],
            [seed for _, seed in batch],
            eos_ids=end_token_ids(base.model, base.tokenizer),
            pad_id=base.tokenizer.pad_token_id,
            temperature=0.8,
            top_p=0.95,
            max_new_tokens=max_new_tokens,
        )
    seconds = time.perf_counter() - started
    return seconds, len(answers), sum(len(ids) + 1 for ids in answers)  # + eos


def time_hf_generate(base, prompts, *, n, max_new_tokens, batch_size) -> tuple[float, int, int]:
    """transformers' generate with sampling, prompts x n per call, left padded."""
    import torch

    from training.engine.data import encode_prompt
    from training.engine.logprobs import pad_batch

    tokenizer, model = base.tokenizer, base.model
    per_call = max(1, batch_size // n)
    torch.manual_seed(0)
    started, answers = time.perf_counter(), []
    for start in range(0, len(prompts), per_call):
        rows = [encode_prompt(tokenizer, p) for p in prompts[start : start + per_call]]
        ids, mask = pad_batch(rows, tokenizer.pad_token_id, left=True, device=base.device)
        width = ids.shape[1]
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                num_return_sequences=n,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new_tokens = out[:, width:]
        answers += (new_tokens != tokenizer.pad_token_id).sum(-1).tolist()
    seconds = time.perf_counter() - started
    return seconds, len(answers), sum(answers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: build the demo)")
    parser.add_argument("--prompts", type=Path, help="JSONL with a prompt per line")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

    import torch
    import transformers

    from training.engine.modeling import load_base

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    model_dir = args.model
    if model_dir is None:
        from training.demo import build_demo_model

        model_dir = Path(tempfile.mkdtemp(prefix="demo-model-"))
        scenario = build_demo_model(model_dir)
        print(f"built the demo model in {scenario.build_seconds:.0f} s", file=sys.stderr)
    prompts = load_prompts(args.prompts or model_dir / "scenario" / "eval.jsonl")
    base = load_base(model_dir)
    time_engine(base, prompts[:2], n=2, max_new_tokens=4, batch_size=4)  # warm-up

    rows = []
    for batch_size in BATCH_SIZES:
        name = "one at a time" if batch_size == 1 else f"batched, {batch_size} answers/pass"
        rows.append(
            (
                name,
                *time_engine(
                    base,
                    prompts,
                    n=args.n,
                    max_new_tokens=args.max_new_tokens,
                    batch_size=batch_size,
                ),
            )
        )
    rows.append(
        (
            "transformers generate, 16/pass",
            *time_hf_generate(
                base, prompts, n=args.n, max_new_tokens=args.max_new_tokens, batch_size=16
            ),
        )
    )

    print(
        f"{len(prompts)} prompts x n={args.n}, max_new_tokens {args.max_new_tokens}, "
        f"{base.device}, torch threads {torch.get_num_threads()}"
    )
    header = ("mode", "seconds", "answers", "tokens", "answers/s", "tokens/s", "speed-up")
    one_at_a_time = rows[0][2] / rows[0][1]
    table = [
        (
            name,
            f"{s:.2f}",
            str(a),
            str(t),
            f"{a / s:.1f}",
            f"{t / s:.0f}",
            f"{a / s / one_at_a_time:.1f}x",
        )
        for name, s, a, t in rows
    ]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in table:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
        for row in [header, *table]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
