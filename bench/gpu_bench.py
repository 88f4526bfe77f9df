"""The engine on one GPU at real model sizes: peak memory, step time, tokens/s, MFU, and the
memory plan's estimate beside each measured peak.

    python bench/gpu_bench.py                  # 1B and 8B shapes, bf16 / bf16+ckpt / 4-bit
    python bench/gpu_bench.py --shapes 1b      # one shape
    python bench/gpu_bench.py --tiny           # a smoke run at a tiny shape (CPU is fine)

Random-init Llama models in the shapes of Llama-3.2-1B and Llama-3.1-8B (vocabulary 128,256),
built on the device, saved once (4-bit loads need weights on disk) and trained with the
engine's own ``train()``: 64 pairs of 512-token prompts and 128-token answers, batch 8, LoRA r16
on every linear layer, one epoch, no eval. Three settings per shape:

- bf16: no checkpointing, the micro-batch the plan picks for the free memory;
- bf16 + checkpointing, planned for --max-memory 22 (a 24 GB card);
- 4-bit (QLoRA), planned for --max-memory 12.

Peak memory is ``torch.cuda.max_memory_allocated`` over the whole ``train()`` call (reference
pass, loop, after-training pass). Tokens/s counts the training tokens (prompt once, both
answers) of the epoch over the loop's time. MFU takes 4 x parameters x tokens as the work
(forward, and a backward that computes input gradients only: the base is frozen; the
checkpointing recompute is not counted) over the GPU's dense bf16 peak. On a CPU (--tiny) the
peak is the bytes of live tensors (training.engine.memory.TensorBytesTracker) plus the weights.
Meant to finish in under 8 minutes on an H200.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._word_tokenizer import SPECIALS, save_word_tokenizer  # noqa: E402

SHAPES = {
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, intermediate_size=8192, head_dim=64,
               tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, intermediate_size=14336, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=False),
}  # fmt: skip
VOCAB = {"1b": 128_256, "8b": 128_256, "tiny": 512}
SETTINGS = [  # name, config overrides
    ("bf16", {"gradient_checkpointing": False}),
    ("bf16 + checkpointing, --max-memory 22", {"gradient_checkpointing": True, "max_memory": 22}),
    ("4-bit, --max-memory 12", {"quantize": "4bit", "max_memory": 12}),
]
# dense bf16 peak FLOP/s by device name (no sparsity)
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
              "A10G": 70e12}  # fmt: skip


def build(folder: Path, shape: str, device: str) -> None:
    """A random-init Llama of the shape and a word-level tokenizer (one word, one token)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab_size = VOCAB[shape]
    save_word_tokenizer(folder, vocab_size)
    config = LlamaConfig(
        vocab_size=vocab_size, max_position_embeddings=2048, bos_token_id=0, eos_token_id=1,
        pad_token_id=2, **SHAPES[shape],
    )  # fmt: skip
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    del model


def make_pairs(count: int, prompt: int, answer: int, vocab: int) -> list[dict]:
    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(vocab - SPECIALS)}" for _ in range(n))

    return [
        {"prompt": words(prompt - 1), "chosen": " " + words(answer - 1),
         "rejected": " " + words(answer - 1)}
        for _ in range(count)
    ]  # fmt: skip


def run(folder: Path, pairs: list[dict], overrides: dict, work: Path, device: str) -> dict:
    import torch

    from training.engine import TrainConfig, load_base, train
    from training.engine.memory import TensorBytesTracker
    from training.engine.modeling import weight_bytes

    config = TrainConfig(
        model=str(folder), epochs=1, batch_size=8, lora_r=16, lr=1e-4,
        retain_weight=0.0, early_stop=False, ref_cache_dir=str(work / "cache"), **overrides,
    )  # fmt: skip
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = load_base(folder, quantize=config.quantize)
    weights = weight_bytes(base.model)
    tracker = TensorBytesTracker() if device == "cpu" else None
    started = time.perf_counter()
    if tracker is not None:
        with tracker:
            result = train(config, pairs=pairs, out_dir=work / "out", base=base)
        peak = weights + tracker.peak
    else:
        result = train(config, pairs=pairs, out_dir=work / "out", base=base)
        peak = torch.cuda.max_memory_allocated()
    wall = time.perf_counter() - started
    report = result.report
    plan = report["memory_plan"]
    params = sum(p.numel() for p in base.model.parameters())
    del base, result
    return {
        "peak_bytes": peak,
        "estimate_bytes": plan["estimate_bytes"],
        "micro_batch": plan["micro_batch_size"],
        "checkpointing": plan["gradient_checkpointing"],
        "steps": report["training"]["steps"],
        "train_s": report["timings"]["train_s"],
        "reference_s": report["timings"]["reference_s"],
        "wall_s": wall,
        "params": params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=["1b", "8b"], default=["1b", "8b"])
    parser.add_argument("--tiny", action="store_true", help="a tiny shape, for a smoke run")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--answer-tokens", type=int, default=128)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = ["tiny"] if args.tiny else args.shapes
    prompt, answer = (16, 8) if args.tiny else (args.prompt_tokens, args.answer_tokens)
    count = 8 if args.tiny else args.pairs
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    peak_flops = next((v for k, v in PEAK_FLOPS.items() if k in gpu), None)
    settings = SETTINGS
    if device == "cpu" and not _has_bitsandbytes():
        settings = [s for s in SETTINGS if "quantize" not in s[1]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            folder = Path(tmp) / shape
            started = time.perf_counter()
            build(folder, shape, device)
            print(f"# built {shape} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            pairs = make_pairs(count, prompt, answer, VOCAB[shape])
            tokens = count * (prompt + 2 * answer)  # the prompt once, both answers
            for number, (name, overrides) in enumerate(settings):
                work = Path(tmp) / f"{shape}-{number}"  # its own reference cache: no hits
                result = run(folder, pairs, overrides, work, device)
                per_s = tokens / result["train_s"]
                mfu = 4 * result["params"] * per_s / peak_flops if peak_flops else None
                row = {"shape": shape, "setting": name, "tokens_per_s": per_s, "mfu": mfu,
                       **result}  # fmt: skip
                rows.append(row)
                print(f"# {json.dumps(row)}", file=sys.stderr, flush=True)
    print(f"{gpu}, torch {torch.__version__}, {count} pairs of {prompt}/{answer} tokens, "
          f"batch 8, LoRA r16, one epoch")  # fmt: skip
    header = ["shape", "setting", "micro-batch", "peak GiB", "plan GiB", "plan/peak",
              "step s", "tokens/s", "MFU"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [
            row["shape"],
            row["setting"],
            f"{row['micro_batch']}{' + ckpt' if row['checkpointing'] else ''}",
            f"{row['peak_bytes'] / 2**30:.2f}",
            f"{row['estimate_bytes'] / 2**30:.2f}",
            f"{row['estimate_bytes'] / row['peak_bytes']:.2f}",
            f"{row['train_s'] / max(row['steps'], 1):.2f}",
            f"{row['tokens_per_s']:.0f}",
            f"{row['mfu']:.1%}" if row["mfu"] is not None else "-",
        ]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def _has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
