"""Candidate answers sampled from the model itself: N per prompt, batched, reproducible.

    python -m training.engine generate --model DIR [--adapter DIR] --prompts PROMPTS.jsonl \\
        --n 4 --out CANDIDATES.jsonl [--temperature 0.8] [--top-p 0.95] [--seed 0]

PROMPTS.jsonl: one ``{"prompt", "id"?, "existing"?}`` per line; the prompt is a string or a
list of ``{"role", "content"}`` messages (rendered with the chat template, as in training), and
``existing`` lists answers the case already has, which are not offered again. OUT gets one
``{"line", "id"?, "prompt", "candidates"}`` per prompt, in order.

DPO learns only from the pairs it is given; sampling the base (or base + the current adapter)
puts the model's own answers in front of annotators. The Celery worker calls
``sample_candidates(base, prompts, ...)`` with the base model it keeps in memory.

Each answer is drawn with its own random generator, seeded from (seed, prompt, sample number):
a prompt gets the same candidates whichever other prompts share its batch and whatever the
batch size, so a re-run for one case reproduces what a run over the whole project gave it.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from training.engine.data import Prompt, _check_prompt, encode_prompt, read_jsonl
from training.engine.errors import Cancelled, EngineError, first_line
from training.engine.evaluate import end_token_ids, fit_to_context
from training.engine.logprobs import pad_batch
from training.engine.modeling import LoadedBase, eval_mode

SAMPLING_ADAPTER = "candidates"  # PEFT name of an adapter loaded only for sampling


def sample_candidates(
    base: LoadedBase,
    prompts: list[Prompt],
    *,
    n: int = 4,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_new_tokens: int = 128,
    seed: int = 0,
    adapter: str | None = None,
    batch_size: int = 16,
    existing: list[list[str]] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> list[list[str]]:
    """Up to ``n`` distinct sampled answers per prompt, in prompt order.

    Exact duplicates (after stripping whitespace), empty answers and answers already in
    ``existing[i]`` are dropped, so a prompt may get fewer than ``n``. ``batch_size`` counts
    answers per forward pass (a prompt's answers may span two passes). With ``adapter``, the
    adapter is loaded on top of ``base`` for the call and removed afterwards: the base is left
    as it was found. ``on_progress`` gets ``{"phase": "sampling", "step": prompts done,
    "total": prompts}`` before each pass and at the end; ``should_cancel`` is asked before each
    pass and ``Cancelled`` is raised when it says so.
    """
    check_sampling_options(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    if existing is not None and len(existing) != len(prompts):
        raise EngineError(f"existing answers: got {len(existing)} lists for {len(prompts)} prompts")
    tokenizer = base.tokenizer
    prompt_ids, max_new_tokens = fit_to_context(
        base.model, [encode_prompt(tokenizer, prompt) for prompt in prompts], max_new_tokens
    )
    answers_to_draw = [(index, sample) for index in range(len(prompts)) for sample in range(n)]
    texts: list[list[str]] = [[] for _ in prompts]
    eos_ids = end_token_ids(base.model, base.tokenizer)
    with adapter_applied(base, adapter) as model:
        for start in range(0, len(answers_to_draw), batch_size):
            if should_cancel is not None and should_cancel():
                raise Cancelled(f"sampling stopped after {start // n} of {len(prompts)} prompts")
            if on_progress is not None:
                on_progress({"phase": "sampling", "step": start // n, "total": len(prompts)})
            batch = answers_to_draw[start : start + batch_size]
            answers = sample_answer_ids(
                model,
                [prompt_ids[index] for index, _ in batch],
                [answer_seed(seed, prompts[index], sample) for index, sample in batch],
                eos_ids=eos_ids,
                pad_id=tokenizer.pad_token_id,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
            )
            for (index, _), ids in zip(batch, answers, strict=True):
                texts[index].append(tokenizer.decode(ids, skip_special_tokens=True))
    if on_progress is not None:
        on_progress({"phase": "sampling", "step": len(prompts), "total": len(prompts)})
    return [
        distinct(drawn, existing[index] if existing is not None else [])
        for index, drawn in enumerate(texts)
    ]


def check_sampling_options(
    *, n: int, temperature: float, top_p: float, max_new_tokens: int
) -> None:
    if n < 1:
        raise EngineError(f"n must be at least 1 (got {n})")
    if not temperature > 0:
        raise EngineError(f"temperature must be above 0 (got {temperature}); 0.7-1.0 is usual")
    if not 0 < top_p <= 1:
        raise EngineError(f"top_p must be in (0, 1] (got {top_p}); 0.9-1.0 is usual")
    if max_new_tokens < 1:
        raise EngineError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")


def distinct(answers: list[str], existing: list[str]) -> list[str]:
    """Answers in order, without empty ones, repeats, or ones already in ``existing``."""
    seen = {answer.strip() for answer in existing}
    kept = []
    for answer in answers:
        key = answer.strip()
        if key and key not in seen:
            seen.add(key)
            kept.append(answer)
    return kept


def answer_seed(seed: int, prompt: Prompt, sample: int) -> int:
    text = json.dumps([seed, prompt, sample], ensure_ascii=False, sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


@torch.inference_mode()
def sample_answer_ids(
    model: torch.nn.Module,
    prompt_rows: list[list[int]],
    seeds: list[int],
    *,
    eos_ids: set[int],
    pad_id: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
) -> list[list[int]]:
    """One sampled answer per row (token ids, eos excluded): one batched forward per token,
    left padding and a KV cache, each row drawing from its own seeded generator."""
    device = next(model.parameters()).device
    input_ids, attention_mask = pad_batch(prompt_rows, pad_id, left=True, device=device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    generators = [torch.Generator().manual_seed(row_seed) for row_seed in seeds]
    eos = torch.tensor(sorted(eos_ids), device=device)

    answers: list[list[int]] = [[] for _ in prompt_rows]
    finished = torch.zeros(len(prompt_rows), dtype=torch.bool, device=device)
    cache_argument = _cache_argument(model)
    past = None
    for _ in range(max_new_tokens):
        output = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,  # only the last position: a prompt's logits would be (len x vocab)
            **{cache_argument: past},
        )
        past = getattr(output, cache_argument)
        probs = top_p_probs(output.logits[:, -1].float() / temperature, top_p).cpu()
        tokens = torch.stack(
            [
                torch.multinomial(row_probs, 1, generator=generator)[0]
                for row_probs, generator in zip(probs, generators, strict=True)
            ]
        ).to(device)
        tokens[finished] = pad_id
        stopped = torch.isin(tokens, eos)
        for i in (~finished & ~stopped).nonzero()[:, 0].tolist():
            answers[i].append(int(tokens[i]))
        finished |= stopped
        if bool(finished.all()):
            break
        input_ids = tokens[:, None]
        attention_mask = torch.cat([attention_mask, torch.ones_like(input_ids)], dim=1)
        position_ids = position_ids[:, -1:] + 1
    return answers


def _cache_argument(model: torch.nn.Module) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache`` (argument and output field)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(inner.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def top_p_probs(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Softmax over the smallest set of tokens whose probability reaches ``top_p`` (nucleus)."""
    probs = logits.softmax(-1)
    if top_p >= 1:
        return probs
    sorted_probs, order = probs.sort(-1, descending=True)
    # Keep a token if the tokens above it do not reach top_p yet (the top one always stays).
    drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    sorted_probs[drop] = 0
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


@contextmanager
def adapter_applied(base: LoadedBase, adapter: str | None) -> Iterator[torch.nn.Module]:
    """The base model, wearing ``adapter`` for the duration when one is given.

    The worker keeps one base model between jobs, so the LoRA layers are removed afterwards
    (unload, not merge) and the model comes back exactly as it was, even on an error.
    """
    if adapter is None:
        yield base.model
        return
    from peft import PeftModel

    from training.engine.folders import check_adapter_folder
    from training.engine.lora import check_adapter_fits

    path = Path(adapter).expanduser()
    check_adapter_folder(path)
    check_adapter_fits(path, base)
    had_peft_config = hasattr(base.model, "peft_config")
    try:
        model = PeftModel.from_pretrained(
            base.model, str(path), adapter_name=SAMPLING_ADAPTER, is_trainable=False
        )
    except Exception as error:  # noqa: BLE001 (truncated files, shapes of another model)
        _restore(base, had_peft_config)
        raise EngineError(
            f"cannot load adapter {path} on {base.path}: {first_line(error)}"
        ) from None
    eval_mode(model)
    try:
        yield model
    finally:
        model.unload()
        _restore(base, had_peft_config)


def _restore(base: LoadedBase, had_peft_config: bool) -> None:
    if not had_peft_config and hasattr(base.model, "peft_config"):
        del base.model.peft_config
    base.model.requires_grad_(False)
    eval_mode(base.model)


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF model folder to sample from")
    parser.add_argument("--adapter", help="LoRA adapter folder to sample base + adapter")
    parser.add_argument("--prompts", required=True, type=Path, help="PROMPTS.jsonl")
    parser.add_argument("--n", type=int, default=4, help="answers per prompt (default 4)")
    parser.add_argument("--out", required=True, type=Path, help="CANDIDATES.jsonl to write")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16, help="answers per forward pass")


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """PROMPTS.jsonl records, checked: a prompt on every line, existing answers as strings."""
    records = read_jsonl(path, what="prompts")
    for record in records:
        where = f"{path} line {record['line']}"
        if "prompt" not in record:
            raise EngineError(f"{where}: missing field 'prompt'")
        _check_prompt(record["prompt"], where, "prompt")
        existing = record.get("existing", [])
        if not (isinstance(existing, list) and all(isinstance(a, str) for a in existing)):
            raise EngineError(f"{where}: field 'existing' must be a list of answer strings")
    return records


def run(args: argparse.Namespace) -> int:
    from training.engine.folders import check_adapter_folder, check_model_folder
    from training.engine.modeling import load_base

    check_sampling_options(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
    )
    if args.batch_size < 1:
        raise EngineError(f"--batch-size must be at least 1 (got {args.batch_size})")
    records = read_prompts(args.prompts)
    check_model_folder(args.model)
    if args.adapter:
        check_adapter_folder(args.adapter)
    if not args.out.parent.is_dir():
        raise EngineError(f"cannot write {args.out}: folder {args.out.parent} does not exist")
    if args.out.is_dir():
        raise EngineError(f"cannot write {args.out}: it is a folder; name a .jsonl file in it")

    _quiet_libraries()
    started = time.perf_counter()
    base = load_base(args.model)
    candidates = sample_candidates(
        base,
        [record["prompt"] for record in records],
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        adapter=args.adapter,
        batch_size=args.batch_size,
        existing=[record.get("existing", []) for record in records],
        on_progress=lambda p: print(f"sampled {p['step']}/{p['total']} prompts", file=sys.stderr),
    )
    partial = args.out.with_name(args.out.name + ".partial")
    with partial.open("w", encoding="utf-8") as out:
        for record, answers in zip(records, candidates, strict=True):
            row = {"line": record["line"]}
            if "id" in record:
                row["id"] = record["id"]
            row |= {"prompt": record["prompt"], "candidates": answers}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(partial, args.out)  # a reader never sees half a file
    total = sum(len(answers) for answers in candidates)
    print(
        f"wrote {total} candidates for {len(records)} prompts to {args.out} "
        f"({len(records) * args.n - total} duplicates or empty answers dropped, "
        f"{time.perf_counter() - started:.1f} s)"
    )
    return 0


def _quiet_libraries() -> None:
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
