"""The engine's memory plan, made before a job is launched: the launch form, the API's launch
answer and the job page say how much GPU memory the job needs and whether the worker has it.

The web process has no GPU and does not load the model: the plan comes from the model's
config.json (training.engine.memory, no torch), the snapshot's longest prompt and answer
(counted with the model's tokenizer.json when it has one, else estimated at three characters a
token), and the worker's GPU memory when PATCHWISE_WORKER_GPU_MEMORY_GIB says it. The worker
plans again with the exact token counts and its device's free memory before it loads anything.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from django.conf import settings

from training.engine.errors import EngineError
from training.engine.memory import GIB, MemoryPlan, ModelShape, Workload, plan_memory

CHARS_PER_TOKEN = 3  # a cautious guess where the model has no tokenizer.json
GPU_DTYPE_BYTES = 2  # the worker trains in bf16 on a GPU


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # conversational: the messages' contents
        return "\n".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    return ""


def _counter(model: str):
    tokenizer_file = Path(model).expanduser() / "tokenizer.json"
    try:
        tokenizer = _tokenizer(str(tokenizer_file), tokenizer_file.stat().st_mtime_ns)
    except OSError:
        tokenizer = None
    if tokenizer is None:
        return lambda text: len(text) // CHARS_PER_TOKEN + 1
    return lambda text: len(tokenizer.encode(text).ids) + 1  # + BOS or EOS


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str, mtime_ns: int) -> Any:
    """The fast tokenizer of a model folder, read once per version of the file (a real one is
    megabytes, and the launch form plans on every render)."""
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(path)
    except Exception:  # noqa: BLE001 (an unreadable file: estimate instead)
        return None


def worker_memory_bytes(config: dict[str, Any]) -> tuple[int | None, str]:
    if config.get("max_memory"):
        return int(float(config["max_memory"]) * GIB), "max_memory"
    known = settings.PATCHWISE_WORKER_GPU_MEMORY_GIB
    if known:
        return int(known * GIB), "the worker's GPU"
    return None, "unknown"


def launch_plan(
    *, config: dict[str, Any], pairs: list[dict[str, Any]], eval_items: list[dict[str, Any]]
) -> MemoryPlan | None:
    """The plan for a job of ``config`` on these pairs; None when the model's config.json
    cannot be read (the launch says so elsewhere). EngineError when nothing would fit."""
    model = config.get("model") or settings.PATCHWISE_BASE_MODEL
    try:
        shape = ModelShape.from_config(
            json.loads((Path(model).expanduser() / "config.json").read_text())
        )
    except (OSError, ValueError, EngineError):
        return None
    count = _counter(model)
    max_prompt = config.get("max_prompt_length") or 512
    max_length = config.get("max_length") or 1024
    max_new = config.get("max_new_tokens") or 64
    prompts = [count(_text(pair["prompt"])) for pair in pairs]
    prompts += [count(_text(item["prompt"])) for item in eval_items]
    answers = [count(_text(pair[key])) for pair in pairs for key in ("chosen", "rejected")]
    prompt_tokens = min(max(prompts, default=1), max_prompt)
    answer_tokens = min(max(answers + ([max_new] if eval_items else []), default=1), max_length)
    gpus = max(1, int(config.get("gpus") or 1))
    batch = int(config.get("batch_size") or 8)
    workload = Workload(
        batch_size=-(-batch // gpus),
        prompt_tokens=prompt_tokens,
        answer_tokens=answer_tokens,
        lora_r=int(config.get("lora_r") or 16),
        dtype_bytes=GPU_DTYPE_BYTES,
        quantize=config.get("quantize"),
        generation_prompts=len(eval_items),
        max_new_tokens=max_new,
        shards=gpus if config.get("shard_base") else 1,
    )
    available, source = worker_memory_bytes(config)
    return plan_memory(
        shape,
        workload,
        micro_batch_size=config.get("micro_batch_size") or "auto",
        gradient_checkpointing=config.get("gradient_checkpointing"),
        available_bytes=available,
        available_source=source,
    )


def plan_line(plan: MemoryPlan | None) -> str:
    """In words, for the form and the job page."""
    if plan is None:
        return ""
    line = f"needs about {plan.estimate_gib:.1f} GiB on the worker's GPU"
    if plan.available_bytes is not None:
        line += f" (of {plan.available_bytes / GIB:.1f} GiB): fits"
    how = f"micro-batch {plan.micro_batch_size}"
    how += ", gradient checkpointing" if plan.gradient_checkpointing else ""
    how += ", 4-bit base" if plan.quantize else ""
    line += f" ({how})"
    if plan.available_bytes is None:
        line += "; set PATCHWISE_WORKER_GPU_MEMORY_GIB to check that it fits"
    return line
