"""Sequence log-probs of answers given prompts: the one forward pass DPO needs.

A sequence's log-prob is the SUM of its answer tokens' log-probs (prompt tokens excluded).

Two implementations that compute the same numbers:

- ``pair_logps_concat`` — the plain one, as TRL does it: ``prompt+chosen`` and
  ``prompt+rejected`` as two full sequences. Kept as the reference the tests compare against.
- ``pair_logps_shared`` — the prompt runs ONCE; its KV cache (still attached to the autograd
  graph) is repeated for the two answers, which then run as continuations. Gradients reach the
  prompt through the cached keys and values. On long prompts this roughly halves the work.

Prompts are left-padded (so every prompt's last token sits in the last column, whose logits
predict each answer's first token) with explicit ``position_ids``, so padding never shifts
positions; answers are right-padded and masked.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import transformers
from torch import Tensor

from training.engine.data import EncodedPair

# transformers 5.2x renamed the KV cache argument/output ``past_key_values`` -> ``cache``.
CACHE_KWARG = (
    "cache"
    if "cache" in inspect.signature(transformers.LlamaForCausalLM.forward).parameters
    else "past_key_values"
)


@dataclass
class PairLogps:
    """Per pair: summed answer log-probs and answer lengths (in tokens)."""

    chosen: Tensor  # (B,)
    rejected: Tensor  # (B,)
    chosen_tokens: Tensor  # (B,)
    rejected_tokens: Tensor  # (B,)


def pad_batch(
    rows: list[list[int]], pad_id: int, *, left: bool, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one (ids, attention mask) batch, padded on the left (for generation) or
    the right, on `device`."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if left:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        else:
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """log p(target) per position, in fp32 whatever the model's dtype."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def completion_logps_concat(
    model: torch.nn.Module,
    prompts: list[list[int]],
    completions: list[list[int]],
    *,
    pad_id: int,
) -> tuple[Tensor, Tensor]:
    """Summed log-probs of each completion after its prompt, one full sequence per row."""
    device = next(model.parameters()).device
    sequences = [p + c for p, c in zip(prompts, completions, strict=True)]
    input_ids, attention_mask = pad_batch(sequences, pad_id, left=False, device=device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logps = _token_logps(logits[:, :-1], input_ids[:, 1:])
    # target position t (predicting token t+1) belongs to the answer when t+1 >= len(prompt)
    positions = torch.arange(1, input_ids.shape[1], device=device)
    starts = torch.tensor([len(p) for p in prompts], device=device)
    answer_mask = (positions[None, :] >= starts[:, None]) & (attention_mask[:, 1:] == 1)
    return (logps * answer_mask).sum(-1), answer_mask.sum(-1)


def pair_logps_concat(
    model: torch.nn.Module, pairs: list[EncodedPair], *, pad_id: int
) -> PairLogps:
    """The reference implementation: chosen and rejected each re-read the whole prompt."""
    prompts = [p.prompt_ids for p in pairs for _ in range(2)]
    completions = [c for p in pairs for c in (p.chosen_ids, p.rejected_ids)]
    logps, tokens = completion_logps_concat(model, prompts, completions, pad_id=pad_id)
    return PairLogps(logps[0::2], logps[1::2], tokens[0::2], tokens[1::2])


def pair_logps_shared(
    model: torch.nn.Module, pairs: list[EncodedPair], *, pad_id: int
) -> PairLogps:
    """Prompt once, answers as two continuations of its (differentiable) KV cache."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = pad_batch(
        [p.prompt_ids for p in pairs], pad_id, left=True, device=device
    )
    prompt_positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    prompt_out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=prompt_positions,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = prompt_out[CACHE_KWARG]
    if not hasattr(cache, "batch_repeat_interleave"):
        # an architecture whose cache cannot be repeated per answer: do it the plain way
        return pair_logps_concat(model, pairs, pad_id=pad_id)
    cache.batch_repeat_interleave(2)  # rows: p0, p0, p1, p1, ... for c0, r0, c1, r1, ...
    first_logits = prompt_out.logits[:, -1:].repeat_interleave(2, dim=0)

    completions = [c for p in pairs for c in (p.chosen_ids, p.rejected_ids)]
    answer_ids, answer_mask = pad_batch(completions, pad_id, left=False, device=device)
    prompt_lengths = torch.tensor([len(p.prompt_ids) for p in pairs], device=device)
    answer_positions = prompt_lengths.repeat_interleave(2)[:, None] + torch.arange(
        answer_ids.shape[1], device=device
    )
    answer_out = model(
        input_ids=answer_ids,
        attention_mask=torch.cat([prompt_mask.repeat_interleave(2, dim=0), answer_mask], dim=1),
        position_ids=answer_positions,
        use_cache=True,
        **{CACHE_KWARG: cache},
    )
    logits = torch.cat([first_logits, answer_out.logits[:, :-1]], dim=1)
    logps = (_token_logps(logits, answer_ids) * answer_mask).sum(-1)
    tokens = answer_mask.sum(-1)
    return PairLogps(logps[0::2], logps[1::2], tokens[0::2], tokens[1::2])


def pair_logps(
    model: torch.nn.Module, pairs: list[EncodedPair], *, pad_id: int, prefix_sharing: bool
) -> PairLogps:
    if prefix_sharing:
        return pair_logps_shared(model, pairs, pad_id=pad_id)
    return pair_logps_concat(model, pairs, pad_id=pad_id)
