"""Command line: ``python -m training.engine train|generate|demo ...``.

Bad input ends in one line on stderr naming the path, line or field, and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import NoReturn

from training.engine.config import LOSSES, QUANTIZE, TrainConfig
from training.engine.errors import Cancelled, EngineError


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage dump) like the engine's own."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--model", required=True, help="HF model folder to patch")
    parser.add_argument("--pairs", required=True, type=Path, help="PAIRS.jsonl")
    parser.add_argument("--out", required=True, type=Path, help="folder for the adapter + reports")
    parser.add_argument("--eval", type=Path, help="EVAL.jsonl: flagged/heldout/regression prompts")
    parser.add_argument("--adapter", help="deployed adapter folder; the patch stacks on it")
    parser.add_argument("--beta", type=float, default=defaults.beta)
    parser.add_argument("--loss", choices=LOSSES, default=defaults.loss)
    parser.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    parser.add_argument("--sft-weight", type=float, default=defaults.sft_weight)
    parser.add_argument("--retain-weight", type=float, default=defaults.retain_weight)
    parser.add_argument(
        "--sft-warmup-epochs",
        type=int,
        default=defaults.sft_warmup_epochs,
        help="epochs of plain SFT on the chosen answers before DPO (0: none)",
    )
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lora-r", type=int, default=defaults.lora_r)
    parser.add_argument(
        "--target-modules",
        type=lambda value: tuple(name.strip() for name in value.split(",") if name.strip()),
        default=defaults.target_modules,
        help="comma-separated layer names for LoRA (default: every linear layer of the "
        "decoder blocks, as this architecture names them)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--progress",
        choices=("text", "json"),
        default="text",
        help="text: a line per step; json: every progress event as one JSON object a line "
        "(what the gpu worker reads from a torchrun job)",
    )
    parser.add_argument(
        "--drift-tolerance",
        type=float,
        default=defaults.drift_tolerance,
        help="nats per token a reworded regression answer may drift and still count unchanged",
    )
    parser.add_argument(
        "--micro-batch-size",
        type=_micro_batch_size,
        default=defaults.micro_batch_size,
        metavar="M|auto",
        help="pairs per forward pass, gradients accumulated over --batch-size (default: auto, "
        "the largest the memory plan fits)",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=defaults.gradient_checkpointing,
        help="recompute activations in the backward pass (default: only when the plan needs it)",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE,
        default=defaults.quantize,
        help="hold the base in 4-bit NF4 while training (QLoRA; pip install -e '.[qlora]')",
    )
    parser.add_argument(
        "--max-memory",
        type=float,
        default=defaults.max_memory,
        metavar="GIB",
        help="memory the job may use (default: the device's free memory; on a CPU, free RAM)",
    )
    parser.add_argument(
        "--shard-base",
        action=argparse.BooleanOptionalAction,
        default=defaults.shard_base,
        help="under torchrun: split the base's decoder blocks across the processes (FSDP), so "
        "each GPU holds 1/N of it; for a base that does not fit one GPU (not with --quantize)",
    )


def _micro_batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is neither 'auto' nor a number") from None


def _run_train(args: argparse.Namespace) -> int:
    from training.engine.config import validate_config
    from training.engine.data import read_jsonl
    from training.engine.folders import check_model_folder

    config = TrainConfig(
        model=args.model,
        adapter=args.adapter,
        beta=args.beta,
        loss=args.loss,
        label_smoothing=args.label_smoothing,
        sft_weight=args.sft_weight,
        retain_weight=args.retain_weight,
        sft_warmup_epochs=args.sft_warmup_epochs,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lora_r=args.lora_r,
        target_modules=args.target_modules,
        seed=args.seed,
        micro_batch_size=args.micro_batch_size,
        gradient_checkpointing=args.gradient_checkpointing,
        quantize=args.quantize,
        max_memory=args.max_memory,
        shard_base=args.shard_base,
        drift_tolerance=args.drift_tolerance,
    )
    validate_config(config)  # before loading anything: a bad config fails in a second
    check_model_folder(config.model)
    pairs = read_jsonl(args.pairs, what="pairs")
    eval_items = read_jsonl(args.eval, what="eval") if args.eval else None

    import transformers

    from training.engine import distributed
    from training.engine.trainer import train

    transformers.logging.set_verbosity_error()  # the CLI prints its own progress
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices
    transformers.logging.disable_progress_bar()
    ranks = distributed.init_from_environment()  # under torchrun: join the other ranks
    try:
        return _train_and_print(args, config, pairs, eval_items, ranks, train)
    finally:
        distributed.shutdown()


def _train_and_print(args, config, pairs, eval_items, ranks, train) -> int:
    """Train (on this rank's share), then, on rank 0 only, print what was done."""

    def show(progress: dict) -> None:
        if args.progress == "json":
            print(json.dumps(progress), flush=True)
        elif progress["phase"] == "plan":
            print(f"memory plan: {progress['memory_plan']['summary']}", flush=True)
        elif progress["phase"] == "train" and "loss" in progress.get("metrics", {}):
            metrics = progress["metrics"]
            print(
                f"epoch {progress['epoch']} step {progress['step']}/{progress['total']} "
                f"loss {metrics['loss']:.4f} margin {metrics['rewards/margins']:.3f} "
                f"nll {metrics['nll']:.3f}",
                flush=True,
            )

    result = train(config, pairs=pairs, out_dir=args.out, eval_items=eval_items, on_progress=show)
    if not ranks.is_main:
        return 0
    report = result.report
    data = report["data"]
    print(
        f"pairs {data['pairs']} ({data['truncated_pairs']} truncated), "
        f"reference log-probs from cache: {data['ref_cache_hits']}/{data['pairs']}"
    )
    print(f"stopped: {report['training']['stopped_because']}")
    for kind, counts in report["summary"].items():
        if kind == "regression":
            print(
                f"{kind}: {counts['identical']}/{counts['total']} "
                f"identical, {counts['unchanged']}/{counts['total']} within tolerance"
            )
        else:
            print(f"{kind}: {counts['fixed']}/{counts['with_rule']} fixed")
    print(f"wrote {', '.join(str(path) for path in result.files)}")
    stacked = report["stacked_on_adapter"]
    if stacked and stacked["combined"]:
        print(f"combined with {stacked['path']} as one LoRA of rank {stacked['combined_rank']}: "
              f"{args.out / stacked['combined']} (serve it in place of that adapter)")  # fmt: skip
    elif stacked:
        print(f"not combined with {stacked['path']}: {stacked['combined_refused']}")
    return 0


# Subcommands whose code lives in their own module, which provides
# ``add_arguments(parser)`` and ``run(args) -> int``; imported only when chosen (torch is slow).
PLUGGED_COMMANDS = {
    "generate": ("training.engine.generate", "sample answers from a model"),
    "demo": ("training.demo", "build the demo model and its scenario"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _Parser(prog="python -m training.engine", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train_arguments(commands.add_parser("train", help="train a LoRA DPO patch"))
    chosen = argv[0] if argv else None
    plugged = None
    for name, (module_name, help_text) in PLUGGED_COMMANDS.items():
        subparser = commands.add_parser(name, help=help_text)
        if name == chosen:
            plugged = importlib.import_module(module_name)
            plugged.add_arguments(subparser)
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _run_train(args)
        return plugged.run(args)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Cancelled as cancelled:
        print(f"cancelled: {cancelled}", file=sys.stderr)
        return 130
    except Exception as error:
        if not _distributed_rank():
            raise
        # Under torchrun, say which rank failed in one line the gpu worker can show the user;
        # the traceback above it is for the log.
        traceback.print_exc()
        rank = _distributed_rank()
        print(f"error: rank {rank} failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


def _distributed_rank() -> str | None:
    """This process's rank when torchrun started it among several, else None."""
    return os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


if __name__ == "__main__":
    sys.exit(main())
