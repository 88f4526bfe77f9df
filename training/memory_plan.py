"""The engine's memory plan, made before a job is launched: the launch form, the API's launch
answer and the job page say how much GPU memory the job needs and whether the worker has it.

The web process has no GPU and does not load the model: the plan comes from the model's
config.json (training.engine.memory, no torch), the snapshot's longest prompt and answer
(counted with the model's tokenizer.json when it has one, else estimated at three characters a
token; conversations through the model's chat template, as the worker will count them, when
transformers is installed here), and the worker's GPU memory when
PATCHWISE_WORKER_GPU_MEMORY_GIB says it. The worker plans again with the exact token counts and
its device's free memory before it loads anything.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings

from training.engine.data import encode_completions, encode_prompt, is_conversational
from training.engine.errors import EngineError
from training.engine.memory import GIB, MemoryPlan, ModelShape, Workload, plan_memory

CHARS_PER_TOKEN = 3  # a cautious guess where the model has no tokenizer.json
# conversations put through the chat template exactly: the longest few by their text (the
# template adds about the same headers to each, and a real one renders in a millisecond)
TEMPLATED_CONVERSATIONS = 16
GPU_DTYPE_BYTES = 2  # the worker trains in bf16 on a GPU


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # conversational: the messages' contents
        return "\n".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    return ""


def _counter(model: str) -> Callable[[str, bool], int]:
    """count(text, prompt): tokens as the worker's ``tok(prompt)`` (with the special tokens
    the tokenizer adds) or an answer (without them, plus its eos)."""
    tokenizer_file = Path(model).expanduser() / "tokenizer.json"
    try:
        tokenizer = _tokenizer(str(tokenizer_file), tokenizer_file.stat().st_mtime_ns)
    except OSError:
        tokenizer = None
    if tokenizer is None:
        return lambda text, prompt: len(text) // CHARS_PER_TOKEN + 1
    return lambda text, prompt: (
        len(tokenizer.encode(text, add_special_tokens=prompt).ids) + (not prompt)
    )


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str, mtime_ns: int) -> Any:
    """The fast tokenizer of a model folder, read once per version of the file (a real one is
    megabytes, and the launch form plans on every render)."""
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(path)
    except Exception:  # noqa: BLE001 (an unreadable file: estimate instead)
        return None


@functools.lru_cache(maxsize=2)
def _chat_tokenizer(path: str, mtime_ns: int) -> Any:
    """The model's tokenizer with its chat template, as the worker loads it; None without
    transformers in this process or without a template (then conversations are estimated)."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception:  # noqa: BLE001 (no transformers, or a folder it cannot read: estimate)
        return None
    return tokenizer if getattr(tokenizer, "chat_template", None) else None


def _template_lengths(
    model: str, pairs: list[dict[str, Any]], eval_items: list[dict[str, Any]]
) -> tuple[int, int]:
    """The longest conversational prompt and answer as the worker's encoding counts them
    (role headers, generation prompt, turn ends); (0, 0) when that cannot be done here."""
    conversations = [pair for pair in pairs if is_conversational(pair["prompt"])]
    questions = [item["prompt"] for item in eval_items if is_conversational(item["prompt"])]
    if not conversations and not questions:
        return 0, 0
    folder = Path(model).expanduser()
    try:
        stamp = max(f.stat().st_mtime_ns for f in folder.glob("tokenizer*.json"))
    except (OSError, ValueError):
        return 0, 0
    tokenizer = _chat_tokenizer(str(folder), stamp)
    if tokenizer is None:
        return 0, 0

    def size(value: Any) -> int:
        return len(_text(value))

    by_prompt = sorted(conversations, key=lambda pair: size(pair["prompt"]), reverse=True)
    by_answer = sorted(
        conversations,
        key=lambda pair: max(size(pair["chosen"]), size(pair["rejected"])),
        reverse=True,
    )
    longest_prompt = longest_answer = 0
    chosen = {id(pair): pair for pair in by_prompt[:TEMPLATED_CONVERSATIONS]}
    chosen |= {id(pair): pair for pair in by_answer[:TEMPLATED_CONVERSATIONS]}
    try:
        for pair in chosen.values():
            prompt_ids, answers = encode_completions(
                tokenizer, pair["prompt"], [pair["chosen"], pair["rejected"]]
            )
            longest_prompt = max(longest_prompt, len(prompt_ids))
            longest_answer = max(longest_answer, *(len(ids) for ids in answers))
        for prompt in sorted(questions, key=size, reverse=True)[:TEMPLATED_CONVERSATIONS]:
            longest_prompt = max(longest_prompt, len(encode_prompt(tokenizer, prompt)))
    except EngineError:  # a template that refuses these roles: the launch checks say so
        return 0, 0
    return longest_prompt, longest_answer


def longest_in_tokens(
    model: str, pairs: list[dict[str, Any]], eval_items: list[dict[str, Any]]
) -> tuple[int, int]:
    """The longest prompt (of pairs and eval items) and answer, in the model's tokens as far as
    this process can count them, before truncation."""
    count = _counter(model)
    prompts = [count(_text(pair["prompt"]), True) for pair in pairs]
    prompts += [count(_text(item["prompt"]), True) for item in eval_items]
    answers = [count(_text(pair[key]), False) for pair in pairs for key in ("chosen", "rejected")]
    templated_prompt, templated_answer = _template_lengths(model, pairs, eval_items)
    return max([1, templated_prompt, *prompts]), max([1, templated_answer, *answers])


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
    max_prompt = config.get("max_prompt_length") or 512
    max_length = config.get("max_length") or 1024
    max_new = config.get("max_new_tokens") or 64
    longest_prompt, longest_answer = longest_in_tokens(model, pairs, eval_items)
    prompt_tokens = min(longest_prompt, max_prompt)
    answer_tokens = min(max(longest_answer, max_new if eval_items else 1), max_length)
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
