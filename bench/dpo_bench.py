"""Patchwise's DPO engine against TRL's DPOTrainer: the whole process, launch to saved adapter.

    python bench/dpo_bench.py --markdown                 # both scenarios, one table
    python bench/dpo_bench.py --scenarios long --threads 1
    python bench/dpo_bench.py --ablation DEMO_MODEL_DIR   # do retain + early stop earn their place?

Same random-init Llama (hidden 512, 6 layers, Llama's 32000-token vocabulary, word-level so
one word is one token), same 64 pairs, LoRA r16 on q,k,v,o,gate,up,down, batch 8, one epoch,
sigmoid DPO, lr 1e-4, fp32, no eval prompts, for two shapes of pair: "long" (256-token prompts,
48-token answers) and "balanced" (64/64).

Each run is what a user waits for: a fresh process, timed from its launch to its exit, with
the adapter written. The engine is its CLI (``python -m training.engine train ...``, which also
writes report.json with every pair's log-probs after training); TRL is a script of this file
that imports TRL, loads the model, builds a DPOTrainer, trains and saves the adapter, run in two
settings: ``precompute_ref_log_probs=True`` (its fastest for this job: the reference pass runs
once before training, the setting the speed-up is measured against) and its default (the
reference forward inside every step; the old column). TRL runs with gradient checkpointing off
(its default is on, which is slower). Every run gets the same thread count (``--threads``;
default: whatever torch picks, the same for all). Besides wall time each row gives the
process's CPU time (user + system, from wait4), which a busy machine inflates less than wall
time, its peak RSS, and its own phase timings.
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
from bench._child import call_in_child  # noqa: E402

SCENARIOS = {"long": (256, 48), "balanced": (64, 64)}
PAIRS, BATCH, RANK, LR = 64, 8, 16, 1e-4
SPECIALS = 4  # <s> </s> <pad> <unk>
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# system -> (label, setting); the speed-up column is against TRL_BEST
SYSTEMS = {
    "trl-precompute": ("TRL DPOTrainer", "precompute_ref_log_probs=True"),
    "trl": ("TRL DPOTrainer", "reference forward in every step (TRL's default)"),
    "engine": ("patchwise engine", "CLI, report.json included"),
}
TRL_BEST = "trl-precompute"


def build_model(
    out_dir: str | Path, *, hidden: int = 512, layers: int = 6, vocab_size: int = 32000
) -> None:
    """A random-init Llama and a word-level tokenizer: one word, one token."""
    out_dir = Path(out_dir)
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


def engine_command(model_dir: Path, pairs_file: Path, out_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "training.engine", "train", "--model", str(model_dir),
        "--pairs", str(pairs_file), "--out", str(out_dir), "--epochs", "1",
        "--batch-size", str(BATCH), "--lora-r", str(RANK), "--lr", str(LR),
        "--sft-weight", "0", "--retain-weight", "0", "--seed", "0",
    ]  # fmt: skip


def trl_child(args: argparse.Namespace) -> None:
    """What a TRL user runs: import, load, build the trainer, train, save the adapter."""
    marks = {}
    started = time.perf_counter()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    marks["import_s"] = time.perf_counter() - started
    torch.manual_seed(0)
    pairs = [json.loads(line) for line in Path(args.pairs).read_text().splitlines() if line]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = DPOConfig(
        output_dir=str(Path(args.out) / "checkpoints"), per_device_train_batch_size=BATCH,
        num_train_epochs=1, learning_rate=LR, beta=0.1, loss_type=["sigmoid"], max_length=1024,
        gradient_checkpointing=False, bf16=False, use_cpu=True, report_to=[],
        save_strategy="no", logging_steps=1, dataloader_num_workers=0, seed=0,
        disable_tqdm=True, precompute_ref_log_probs=args.child == "trl-precompute",
    )  # fmt: skip
    lora = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS, task_type="CAUSAL_LM")
    phase = time.perf_counter()
    trainer = DPOTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer, peft_config=lora,
    )  # fmt: skip
    marks["setup_s"] = time.perf_counter() - phase  # tokenizing, and the precomputed reference
    phase = time.perf_counter()
    trainer.train()
    marks["train_s"] = time.perf_counter() - phase
    trainer.save_model(args.out)
    print("RESULT " + json.dumps({name: round(value, 2) for name, value in marks.items()}))


def run_process(command: list[str], env: dict[str, str], logs: Path) -> tuple[dict, str, str]:
    """Run one whole process; wall time from launch to exit, and its own CPU time and peak RSS
    (wait4's rusage, so nothing else on the machine is counted)."""
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "stdout").open("w") as out, (logs / "stderr").open("w") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    measured = {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "returncode": process.returncode,
    }
    return measured, (logs / "stdout").read_text(), (logs / "stderr").read_text()


def run_system(system: str, model_dir: Path, pairs_file: Path, work: Path, env: dict) -> dict:
    out_dir = work / f"out-{system}"
    if system == "engine":
        command = engine_command(model_dir, pairs_file, out_dir)
        env = {**env, "PATCHWISE_CACHE_DIR": str(work / "engine-cache")}  # a fresh reference
    else:
        command = [
            sys.executable, __file__, "--child", system, "--model", str(model_dir),
            "--pairs", str(pairs_file), "--out", str(out_dir),
        ]  # fmt: skip
        env = {**env, "HF_DATASETS_CACHE": str(work / f"datasets-{system}")}
    measured, stdout, stderr = run_process(command, env, work / f"logs-{system}")
    if measured["returncode"] != 0:
        sys.exit(f"{system} failed:\n{stderr[-3000:]}")
    if not (out_dir / "adapter_model.safetensors").is_file():
        sys.exit(f"{system} wrote no adapter in {out_dir}")
    if system == "engine":
        timings = json.loads((out_dir / "report.json").read_text())["timings"]
        phases = {name: round(value, 1) for name, value in timings.items() if value >= 0.05}
    else:
        lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        phases = json.loads(lines[-1][len("RESULT ") :])
    return {**measured, "phases": phases}


def parent(args: argparse.Namespace) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        # in a process of its own: wait4's peaks would count this one's (bench/_child.py)
        call_in_child("bench.dpo_bench:build_model", out_dir=str(model_dir), hidden=args.hidden,
                      layers=args.layers, vocab_size=args.vocab)  # fmt: skip
        for scenario in args.scenarios:
            pairs_file = work / f"{scenario}.jsonl"
            pairs = make_pairs(*SCENARIOS[scenario], vocab_size=args.vocab)
            pairs_file.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
            for system in args.systems:
                result = run_system(system, model_dir, pairs_file, work / scenario, env)
                rows.append({"scenario": scenario, "system": system, **result})
                print(f"# {scenario} {system}: {result}", file=sys.stderr, flush=True)
    threads = args.threads or "torch's default"
    print(f"threads per process: {threads}; load average after: {os.getloadavg()[0]:.1f}")
    print_table(rows, markdown=args.markdown)


def print_table(rows: list[dict], *, markdown: bool) -> None:
    """Whole process per row; the speed-up is TRL's (precomputed reference) time over the row's.
    The phases are the process's own timings; "rest" is the remainder of its wall time: imports,
    loading the model, tokenizing, saving, exiting."""
    header = [
        "scenario", "system", "setting", "whole process s", "speed-up", "CPU s",
        "peak RSS MiB", "phases s",
    ]  # fmt: skip
    lines = []
    for row in rows:
        best = next(
            (r for r in rows if r["scenario"] == row["scenario"] and r["system"] == TRL_BEST),
            None,
        )
        prompt_tokens, answer_tokens = SCENARIOS[row["scenario"]]
        label, setting = SYSTEMS[row["system"]]
        phases = {**row["phases"], "rest": row["wall_s"] - sum(row["phases"].values())}
        lines.append(
            [
                f"{row['scenario']} {prompt_tokens}/{answer_tokens}",
                label,
                setting,
                f"{row['wall_s']:.1f}",
                f"{best['wall_s'] / row['wall_s']:.2f}x" if best else "-",
                f"{row['cpu_s']:.1f}",
                f"{row['peak_rss_mb']:.0f}",
                ", ".join(f"{key.removesuffix('_s')} {value:.1f}" for key, value in phases.items()),
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
    parser.add_argument(
        "--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS),
        help="which runs (default: all three)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS for every run (default: torch's own choice)"
    )
    parser.add_argument("--child", choices=["trl", "trl-precompute"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--pairs", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ablation:
        ablation(args.ablation, markdown=args.markdown)
    elif args.child:
        trl_child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
