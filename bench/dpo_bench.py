"""Patchwise's DPO engine against TRL's DPOTrainer: wall time, pairs/s and peak memory.

    python bench/dpo_bench.py                    # both scenarios, prints a table
    python bench/dpo_bench.py --scenarios long --markdown
    python bench/dpo_bench.py --ablation DEMO_MODEL_DIR   # do retain + early stop earn their place?

Same random-init Llama (hidden 512, 6 layers, Llama's 32000-token vocabulary, word-level so
one word is one token), same 64 pairs, LoRA r16 on q,k,v,o,gate,up,down, batch 8, one epoch,
sigmoid DPO, fp32, for two shapes of pair: "long" (256-token prompts, 48-token answers) and
"balanced" (64/64). Each run is its own subprocess, so its peak RSS (VmHWM from /proc) is its
own. Model loading is excluded. "Training" is TRL's ``trainer.train()`` (its reference forward
runs inside every step) against the engine's reference pass plus its loop (fresh reference
cache); "whole call" adds the engine's final log-prob pass for the report and saving the
adapter. TRL runs with gradient checkpointing off (its default is on, which is slower), so both
do the same work per step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere
SCENARIOS = {"long": (256, 48), "balanced": (64, 64)}
PAIRS, BATCH, RANK = 64, 8, 16
SPECIALS = 4  # <s> </s> <pad> <unk>
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(
    out_dir: Path, *, hidden: int = 512, layers: int = 6, vocab_size: int = 32000
) -> None:
    """A random-init Llama and a word-level tokenizer: one word, one token."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i + SPECIALS for i in range(vocab_size - SPECIALS)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 0)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>",
    )  # fmt: skip
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=1024,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(out_dir)
    fast.save_pretrained(out_dir)


def make_pairs(
    prompt_tokens: int, answer_tokens: int, *, vocab_size: int = 32000, seed: int = 0
) -> list[dict]:
    """Plain pairs: prompts of prompt_tokens (with BOS), answers of answer_tokens (with EOS)."""
    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(vocab_size - SPECIALS)}" for _ in range(n))

    return [
        {
            "prompt": words(prompt_tokens - 1),
            "chosen": " " + words(answer_tokens - 1),
            "rejected": " " + words(answer_tokens - 1),
        }
        for _ in range(PAIRS)
    ]


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_engine(model_dir: Path, pairs: list[dict], work: Path) -> dict:
    from training.engine import TrainConfig, load_base, train

    base = load_base(model_dir)
    config = TrainConfig(
        model=str(model_dir), epochs=1, batch_size=BATCH, lora_r=RANK,
        lr=1e-4, sft_weight=0.0, retain_weight=0.0, ref_cache_dir=str(work / "cache"),
    )  # fmt: skip
    loaded_rss = peak_rss_mb()
    started = time.perf_counter()
    result = train(config, pairs=pairs, out_dir=work / "out", base=base)
    wall = time.perf_counter() - started
    timings = result.report["timings"]
    return {
        "wall_s": wall,
        "loop_s": timings["reference_s"] + timings["train_s"],
        "loaded_rss_mb": loaded_rss,
        "steps": result.report["training"]["steps"],
    }


def run_trl(model_dir: Path, pairs: list[dict], work: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=BATCH, num_train_epochs=1,
        learning_rate=1e-4, beta=0.1, loss_type=["sigmoid"], max_length=1024,
        gradient_checkpointing=False, bf16=False, use_cpu=True, report_to=[],
        save_strategy="no", logging_steps=1, dataloader_num_workers=0, seed=0,
        disable_tqdm=True,
    )  # fmt: skip
    lora = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS, task_type="CAUSAL_LM")
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer, peft_config=lora,
    )  # fmt: skip
    loaded_rss = peak_rss_mb()
    started = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - started
    steps = output.global_step
    return {"wall_s": wall, "loop_s": wall, "loaded_rss_mb": loaded_rss, "steps": steps}


def child(args: argparse.Namespace) -> None:
    import warnings

    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    pairs = make_pairs(*SCENARIOS[args.scenario], vocab_size=args.vocab)
    with tempfile.TemporaryDirectory() as work:
        runner = run_engine if args.child == "engine" else run_trl
        result = runner(Path(args.model), pairs, Path(work))
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def parent(args: argparse.Namespace) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_model(model_dir, hidden=args.hidden, layers=args.layers, vocab_size=args.vocab)
        for scenario in args.scenarios:
            for system in ("trl", "engine"):
                command = [
                    sys.executable, __file__, "--child", system, "--scenario", scenario,
                    "--model", str(model_dir), "--vocab", str(args.vocab),
                ]  # fmt: skip
                env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
                done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
                lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if done.returncode != 0 or not lines:
                    sys.exit(f"{system}/{scenario} failed:\n{done.stderr[-3000:]}")
                result = json.loads(lines[-1][len("RESULT ") :])
                rows.append({"scenario": scenario, "system": system, **result})
                print(f"# {scenario} {system}: {result}", file=sys.stderr, flush=True)
    print_table(rows, markdown=args.markdown)


def print_table(rows: list[dict], *, markdown: bool) -> None:
    """Training time is the reference pass plus the loop (TRL: its train() call, which does
    both); "whole call" adds the engine's final log-prob pass for the report and the save."""
    header = [
        "scenario", "system", "training s", "pairs/s", "speed-up", "whole call s", "peak RSS MiB",
    ]  # fmt: skip
    lines = []
    for row in rows:
        trl = next(r for r in rows if r["scenario"] == row["scenario"] and r["system"] == "trl")
        prompt_tokens, answer_tokens = SCENARIOS[row["scenario"]]
        lines.append(
            [
                f"{row['scenario']} {prompt_tokens}/{answer_tokens}",
                "TRL DPOTrainer" if row["system"] == "trl" else "patchwise engine",
                f"{row['loop_s']:.1f}",
                f"{PAIRS / row['loop_s']:.2f}",
                f"{trl['loop_s'] / row['loop_s']:.2f}x",
                f"{row['wall_s']:.1f}",
                f"{row['peak_rss_mb']:.0f}",
            ]
        )
    print_rows(header, lines, markdown=markdown)


ABLATIONS = [
    ("defaults", {}),
    ("no early stop (all 30 epochs)", {"early_stop": False}),
    ("no early stop, 1 retain answer per step", {"early_stop": False, "retain_per_step": 1}),
    ("no retain term", {"retain_weight": 0.0}),
    ("no retain, no early stop", {"retain_weight": 0.0, "early_stop": False}),
    ("DPO alone (no SFT term)", {"sft_weight": 0.0}),
    (
        "DPO alone, no retain, no early stop",
        {"sft_weight": 0.0, "retain_weight": 0.0, "early_stop": False},
    ),
]


def ablation(demo_dir: Path, *, markdown: bool) -> None:
    """Train the demo scenario with the defaults and with each mechanism switched off."""
    import warnings

    import transformers

    from training.engine import TrainConfig, load_base, train

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    scenario = demo_dir / "scenario"
    pairs = [json.loads(x) for x in (scenario / "pairs.jsonl").read_text().splitlines() if x]
    items = [json.loads(x) for x in (scenario / "eval.jsonl").read_text().splitlines() if x]
    base = load_base(demo_dir)
    header = [
        "config",
        "flagged fixed",
        "held-out fixed",
        "regression unchanged",
        "epochs",
        "train s",
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in ABLATIONS:
            config = TrainConfig(model=str(demo_dir), ref_cache_dir=f"{tmp}/cache", **overrides)
            result = train(
                config, pairs=pairs, out_dir=Path(tmp) / "out", eval_items=items, base=base
            )
            summary = result.report["summary"]
            rows.append(
                [
                    name,
                    f"{summary['flagged']['fixed']}/{summary['flagged']['total']}",
                    f"{summary['heldout']['fixed']}/{summary['heldout']['total']}",
                    f"{summary['regression']['unchanged']}/{summary['regression']['total']}",
                    str(result.stopped_epoch),
                    f"{result.report['timings']['train_s']:.1f}",
                ]
            )
            print(f"# {rows[-1]}", file=sys.stderr, flush=True)
    print_rows(header, rows, markdown=markdown)


def print_rows(header: list[str], rows: list[list[str]], *, markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--hidden", type=int, default=512, help="smaller for a smoke run")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary size of the model")
    parser.add_argument("--ablation", type=Path, metavar="DEMO_MODEL_DIR", help="demo ablation")
    parser.add_argument("--child", choices=["engine", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--scenario", choices=list(SCENARIOS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ablation:
        ablation(args.ablation, markdown=args.markdown)
    elif args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
