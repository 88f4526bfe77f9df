"""Greedy answers for eval prompts, and what changed between before and after.

``generate_greedy`` is shared with the ``generate`` subcommand and the retain term: batched,
left-padded, deterministic.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from training.engine import distributed
from training.engine.data import EvalItem, Prompt, encode_prompt, turn_end_id
from training.engine.logprobs import pad_batch
from training.engine.modeling import LoadedBase, context_length


def end_token_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    """The tokenizer's eos, the chat template's end-of-turn and the generation config's: chat
    models end a turn with their own token (<|eot_id|>, <|im_end|>), a patch trains answers to
    end there (the token convention), and a served answer stops there."""
    ids = {tokenizer.eos_token_id}
    turn_end = turn_end_id(tokenizer)
    if turn_end is not None:
        ids.add(turn_end)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return ids


def fit_to_context(
    model: torch.nn.Module, rows: list[list[int]], max_new_tokens: int
) -> tuple[list[list[int]], int]:
    """Prompts and answer budget within the model's context: a prompt keeps its end (where
    the question is), and the answer gets at most what is left."""
    context = context_length(model)
    if context is None:
        return rows, max_new_tokens
    max_new_tokens = min(max_new_tokens, context // 2)
    keep = context - max_new_tokens
    return [row[-keep:] for row in rows], max_new_tokens


def generate_greedy_ids(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[Prompt],
    max_new_tokens: int = 64,
    *,
    batch_size: int = 16,
    synced: bool = False,
) -> list[list[int]]:
    """Greedy answer token ids per prompt (ending with eos when the model stopped by itself).

    ``synced``: the model's weights are sharded across ranks (FSDP), so a rank whose answers
    all ended keeps running forward passes until every rank's have (each pass is collective).
    """
    device = next(model.parameters()).device
    answers: list[list[int]] = []
    eos = end_token_ids(model, tokenizer)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        encoded, budget = fit_to_context(
            model, [encode_prompt(tokenizer, prompt) for prompt in batch], max_new_tokens
        )
        input_ids, attention_mask = pad_batch(
            encoded, tokenizer.pad_token_id, left=True, device=device
        )
        width = input_ids.shape[1]
        with distributed.no_grad():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=budget,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(eos),
                synced_gpus=synced,
            )
        for row in output[:, width:].tolist():
            answer = []
            for token in row:
                answer.append(token)
                if token in eos:
                    break
            answers.append(answer)
    return answers


def generate_greedy(
    base_or_model: LoadedBase | torch.nn.Module,
    tokenizer: Any,
    prompts: list[Prompt],
    max_new_tokens: int = 64,
    *,
    batch_size: int = 16,
    synced: bool = False,
) -> list[str]:
    """Greedy answers as text (special tokens dropped), one per prompt, in order."""
    model = base_or_model.model if isinstance(base_or_model, LoadedBase) else base_or_model
    ids = generate_greedy_ids(
        model, tokenizer, prompts, max_new_tokens, batch_size=batch_size, synced=synced
    )
    return [tokenizer.decode(answer, skip_special_tokens=True) for answer in ids]


def regression_coverage(items: list[EvalItem]) -> dict[str, Any]:
    """Which kinds of prompt the regression set covers: by topic and tag, else just a count.

    Retain protects behaviours, not just prompts: a topic absent here is unprotected.
    """
    regression = [item for item in items if item.kind == "regression"]
    topics = Counter(item.topic for item in regression if item.topic)
    tags = Counter(tag for item in regression for tag in item.tags)
    unlabelled = sum(1 for item in regression if not item.topic and not item.tags)
    return {
        "prompts": len(regression),
        "by_topic": dict(sorted(topics.items())),
        "by_tag": dict(sorted(tags.items())),
        "unlabelled": unlabelled,
    }
