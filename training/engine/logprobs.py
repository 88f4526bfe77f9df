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

Neither holds ``[tokens x vocabulary]`` logits for the batch: the decoder gives hidden states,
and the output head runs on the answer positions only, a chunk of tokens at a time, each chunk
recomputed in the backward pass (``head_token_logps``). With a 128k vocabulary, whole-batch
float32 logits are gigabytes; a chunk is 256 MiB.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from training.engine.data import EncodedPair

# transformers 5.2x renamed the KV cache argument/output ``past_key_values`` -> ``cache``.
CACHE_KWARG = (
    "cache"
    if "cache" in inspect.signature(transformers.LlamaForCausalLM.forward).parameters
    else "past_key_values"
)
# float32 logits held at once by the chunked log-probs (forward or backward): 256 MiB is
# about 520 tokens of a 128k vocabulary, small beside an 8B model's weights and activations.
LOGIT_CHUNK_BYTES = 256 * 2**20


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


@dataclass
class LMParts:
    """A causal LM split into its decoder (tokens -> last hidden states) and its output head,
    so log-probs can be taken a chunk of tokens at a time instead of from whole-batch logits."""

    decoder: torch.nn.Module
    head: torch.nn.Module
    vocabulary: int
    logit_scale: float  # Cohere multiplies the head's logits by this
    logit_divisor: float  # Granite divides them by this
    softcap: float | None  # Gemma 2/3 squash them with tanh


def lm_parts(model: torch.nn.Module) -> LMParts | None:
    """The decoder and head of ``model`` (a PEFT model or a plain HF causal LM), or None when
    this architecture does not expose them the standard way (then whole logits are used)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(causal_lm, "base_model_prefix", None)
    decoder = getattr(causal_lm, prefix, None) if prefix else None
    get_head = getattr(causal_lm, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    weight = getattr(head, "weight", None)
    if decoder is None or decoder is causal_lm or weight is None:
        return None
    config = causal_lm.config
    return LMParts(
        decoder=decoder,
        head=head,
        vocabulary=weight.shape[0],
        logit_scale=float(getattr(config, "logit_scale", None) or 1.0),
        logit_divisor=float(getattr(config, "logits_scaling", None) or 1.0),
        softcap=getattr(config, "final_logit_softcapping", None),
    )


def logit_chunk_tokens(vocabulary: int) -> int:
    """Tokens per log-prob chunk: about LOGIT_CHUNK_BYTES of float32 logits at a time."""
    return max(1, LOGIT_CHUNK_BYTES // (4 * vocabulary))


def _chunk_logps(parts: LMParts, hidden: Tensor, targets: Tensor) -> Tensor:
    logits = parts.head(hidden).float()
    if parts.logit_scale != 1.0:
        logits = logits * parts.logit_scale
    if parts.logit_divisor != 1.0:
        logits = logits / parts.logit_divisor
    if parts.softcap:
        logits = torch.tanh(logits / parts.softcap) * parts.softcap
    # log_softmax(x)[t] = x[t] - logsumexp(x): no second [tokens x vocabulary] tensor
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def _plain_head(parts: LMParts) -> Tensor | None:
    """The head's weight when the head is a frozen, bias-free linear layer on a whole tensor
    and its logits are only scaled (no softcap): then ``_HeadLogps`` takes the log-probs."""
    head, weight = parts.head, getattr(parts.head, "weight", None)
    plain = (
        isinstance(head, torch.nn.Linear)
        and type(head).forward is torch.nn.Linear.forward
        and head.bias is None
        and type(weight) in (torch.Tensor, torch.nn.Parameter)
        and weight.is_floating_point()
        and not weight.requires_grad
        and not parts.softcap
    )
    return weight if plain else None


class _HeadLogps(torch.autograd.Function):
    """log p(target) = scale * h.w_t - logsumexp(scale * h.W), for a chunk of tokens.

    Autograd through ``_chunk_logps`` holds about five float32 [tokens x vocabulary] tensors in
    the backward pass (the logits, their shifted exponentials, the softmax, the gathered
    gradient and their sum). Here the gradient is made in place from the softmax: one float32
    copy (plus the head's own dtype for the matmul), a fifth of the memory for a chunk of a
    128k vocabulary. With ``keep`` the softmax is kept from the forward pass (a single chunk:
    the head is the forward's last work, so keeping it costs no more at the peak than
    rebuilding it would); otherwise only the chunk's hidden states and logsumexp are kept and
    the backward pass runs the head again. The head's weight gets no gradient (frozen). The
    backward pass may run once (no ``retain_graph``): it writes over what it kept.
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, scale: float, keep: bool
    ) -> Tensor:
        logits = torch.nn.functional.linear(hidden, weight).float()
        if scale != 1.0:
            logits.mul_(scale)
        picked = logits.gather(-1, targets[:, None]).squeeze(-1)
        peak = logits.amax(-1, keepdim=True)
        total = logits.sub_(peak).exp_().sum(-1, keepdim=True)
        lse = (total.log() + peak).squeeze(-1)
        kept = logits.div_(total) if keep else None  # the softmax
        ctx.save_for_backward(hidden, weight, targets, lse, kept)
        ctx.scale = scale
        return picked - lse

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        hidden, weight, targets, lse, softmax = ctx.saved_tensors
        if softmax is None:
            softmax = torch.nn.functional.linear(hidden, weight).float()
            if ctx.scale != 1.0:
                softmax.mul_(ctx.scale)
            softmax.sub_(lse[:, None]).exp_()
        # d/dx (x_t - logsumexp x) = onehot(t) - softmax(x), times the incoming gradient
        gradient = softmax.mul_(-grad[:, None])
        rows = torch.arange(targets.shape[0], device=targets.device)
        gradient.index_put_((rows, targets), grad, accumulate=True)
        if ctx.scale != 1.0:
            gradient.mul_(ctx.scale)
        return gradient.to(weight.dtype) @ weight, None, None, None, None


def head_token_logps(
    parts: LMParts, hidden: Tensor, targets: Tensor, *, chunk_tokens: int | None = None
) -> Tensor:
    """log p(target) for each row of ``hidden`` (N, H) -> (N,), in float32.

    The head runs on ``chunk_tokens`` rows at a time, and each chunk's logits are rebuilt in
    the backward pass instead of kept, so at most one chunk's [tokens x vocabulary] logits
    exist at once, forward or backward. A single chunk is kept instead: the head is the
    forward's last work, so its logits would be rebuilt at the start of the backward pass,
    with every activation still held, for the same peak at the cost of one more pass of the
    head. A plain linear head goes through ``_HeadLogps`` (one float32 copy of a chunk's
    logits); any other (a softcap, a bias, a head with a LoRA of its own) through autograd.
    """
    chunk = chunk_tokens or logit_chunk_tokens(parts.vocabulary)
    weight = _plain_head(parts)
    scale = parts.logit_scale / parts.logit_divisor
    grad = torch.is_grad_enabled() and hidden.requires_grad
    recompute = grad and hidden.shape[0] > chunk
    pieces = []
    for start in range(0, hidden.shape[0], chunk):
        rows, row_targets = hidden[start : start + chunk], targets[start : start + chunk]
        if weight is not None:
            keep = grad and not recompute
            pieces.append(_HeadLogps.apply(rows, weight, row_targets, scale, keep))
        elif recompute:
            pieces.append(checkpoint(_chunk_logps, parts, rows, row_targets, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(parts, rows, row_targets))
    if not pieces:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(pieces)


def masked_logp_sums(
    parts: LMParts,
    hidden: Tensor,
    targets: Tensor,
    mask: Tensor,
    *,
    chunk_tokens: int | None = None,
) -> Tensor:
    """Per row, the summed log-probs of ``targets`` (B, T) where ``mask`` is set, from the
    hidden states (B, T, H) that predict them; padding never reaches the head."""
    keep = mask.bool()
    rows = torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)
    logps = head_token_logps(parts, hidden[keep], targets[keep], chunk_tokens=chunk_tokens)
    sums = torch.zeros(targets.shape[0], dtype=torch.float32, device=targets.device)
    return sums.index_add(0, rows[keep], logps)


def completion_logps_full_vocab(
    model: torch.nn.Module,
    prompts: list[list[int]],
    completions: list[list[int]],
    *,
    pad_id: int,
) -> tuple[Tensor, Tensor]:
    """Summed log-probs of each completion after its prompt from whole-batch logits: the plain
    way, kept for architectures without a separable head and as the tests' reference."""
    device = next(model.parameters()).device
    sequences = [p + c for p, c in zip(prompts, completions, strict=True)]
    input_ids, attention_mask = pad_batch(sequences, pad_id, left=False, device=device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logps = _token_logps(logits[:, :-1], input_ids[:, 1:])
    answer_mask = _answer_mask(prompts, attention_mask)
    return (logps * answer_mask).sum(-1), answer_mask.sum(-1)


def _answer_mask(prompts: list[list[int]], attention_mask: Tensor) -> Tensor:
    """Target position t (predicting token t+1) belongs to the answer when t+1 >= len(prompt)."""
    device = attention_mask.device
    positions = torch.arange(1, attention_mask.shape[1], device=device)
    starts = torch.tensor([len(p) for p in prompts], device=device)
    return (positions[None, :] >= starts[:, None]) & (attention_mask[:, 1:] == 1)


def completion_logps_concat(
    model: torch.nn.Module,
    prompts: list[list[int]],
    completions: list[list[int]],
    *,
    pad_id: int,
    chunk_tokens: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Summed log-probs of each completion after its prompt, one full sequence per row; the
    head runs in chunks on the answer positions only."""
    parts = lm_parts(model)
    if parts is None:
        return completion_logps_full_vocab(model, prompts, completions, pad_id=pad_id)
    device = next(model.parameters()).device
    sequences = [p + c for p, c in zip(prompts, completions, strict=True)]
    input_ids, attention_mask = pad_batch(sequences, pad_id, left=False, device=device)
    hidden = parts.decoder(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    answer_mask = _answer_mask(prompts, attention_mask)
    sums = masked_logp_sums(
        parts, hidden[:, :-1], input_ids[:, 1:], answer_mask, chunk_tokens=chunk_tokens
    )
    return sums, answer_mask.sum(-1)


def pair_logps_concat(
    model: torch.nn.Module,
    pairs: list[EncodedPair],
    *,
    pad_id: int,
    chunk_tokens: int | None = None,
) -> PairLogps:
    """The reference implementation: chosen and rejected each re-read the whole prompt."""
    prompts = [p.prompt_ids for p in pairs for _ in range(2)]
    completions = [c for p in pairs for c in (p.chosen_ids, p.rejected_ids)]
    logps, tokens = completion_logps_concat(
        model, prompts, completions, pad_id=pad_id, chunk_tokens=chunk_tokens
    )
    return PairLogps(logps[0::2], logps[1::2], tokens[0::2], tokens[1::2])


def pair_logps_shared(
    model: torch.nn.Module,
    pairs: list[EncodedPair],
    *,
    pad_id: int,
    chunk_tokens: int | None = None,
) -> PairLogps:
    """Prompt once, answers as two continuations of its (differentiable) KV cache."""
    parts = lm_parts(model)
    if parts is None:
        return pair_logps_concat(model, pairs, pad_id=pad_id)
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = pad_batch(
        [p.prompt_ids for p in pairs], pad_id, left=True, device=device
    )
    prompt_positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    prompt_out = parts.decoder(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=prompt_positions,
        use_cache=True,
    )
    cache = prompt_out[CACHE_KWARG]
    if not hasattr(cache, "batch_repeat_interleave"):
        # an architecture whose cache cannot be repeated per answer: do it the plain way
        return pair_logps_concat(model, pairs, pad_id=pad_id, chunk_tokens=chunk_tokens)
    cache.batch_repeat_interleave(2)  # rows: p0, p0, p1, p1, ... for c0, r0, c1, r1, ...
    # the prompt's last hidden state predicts each answer's first token
    first_hidden = prompt_out.last_hidden_state[:, -1:].repeat_interleave(2, dim=0)

    completions = [c for p in pairs for c in (p.chosen_ids, p.rejected_ids)]
    answer_ids, answer_mask = pad_batch(completions, pad_id, left=False, device=device)
    prompt_lengths = torch.tensor([len(p.prompt_ids) for p in pairs], device=device)
    answer_positions = prompt_lengths.repeat_interleave(2)[:, None] + torch.arange(
        answer_ids.shape[1], device=device
    )
    answer_out = parts.decoder(
        input_ids=answer_ids,
        attention_mask=torch.cat([prompt_mask.repeat_interleave(2, dim=0), answer_mask], dim=1),
        position_ids=answer_positions,
        use_cache=True,
        **{CACHE_KWARG: cache},
    )
    hidden = torch.cat([first_hidden, answer_out.last_hidden_state[:, :-1]], dim=1)
    logps = masked_logp_sums(parts, hidden, answer_ids, answer_mask, chunk_tokens=chunk_tokens)
    tokens = answer_mask.sum(-1)
    return PairLogps(logps[0::2], logps[1::2], tokens[0::2], tokens[1::2])


# attention implementations that take a custom 4D mask (bool for sdpa, additive for eager)
PACKED_ATTENTION = ("sdpa", "eager")


def _packed_layout(
    pairs: list[EncodedPair], pad_id: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One row per pair: ``prompt | chosen | rejected``, right-padded.

    Returns the ids, the position ids (both answers start where the prompt ends), each
    column's part (0 prompt, 1 chosen, 2 rejected, -1 padding), and for every answer token
    (chosen first, then rejected, pair by pair) its row, the column whose hidden state
    predicts it, the token itself and its sum's slot (2 * pair, + 1 for rejected).
    """
    width = max(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(pairs), width), dtype=torch.long)
    part = torch.full((len(pairs), width), -1, dtype=torch.long)
    rows, columns, targets, slots = [], [], [], []
    for row, pair in enumerate(pairs):
        prompt, chosen, rejected = (
            len(pair.prompt_ids),
            len(pair.chosen_ids),
            len(pair.rejected_ids),
        )
        ids[row, : prompt + chosen + rejected] = torch.tensor(
            pair.prompt_ids + pair.chosen_ids + pair.rejected_ids, dtype=torch.long
        )
        positions[row, :prompt] = torch.arange(prompt)
        positions[row, prompt : prompt + chosen] = torch.arange(prompt, prompt + chosen)
        positions[row, prompt + chosen : prompt + chosen + rejected] = torch.arange(
            prompt, prompt + rejected
        )
        part[row, :prompt] = 0
        part[row, prompt : prompt + chosen] = 1
        part[row, prompt + chosen : prompt + chosen + rejected] = 2
        answers = ((prompt, pair.chosen_ids), (prompt + chosen, pair.rejected_ids))
        for slot, (start, answer) in enumerate(answers, start=2 * row):
            if not answer:
                continue
            # the prompt's last column predicts each answer's first token
            columns += [prompt - 1] + list(range(start, start + len(answer) - 1))
            rows += [row] * len(answer)
            targets += answer
            slots += [slot] * len(answer)
    as_tensor = functools.partial(torch.tensor, dtype=torch.long, device=device)
    return (
        ids.to(device),
        positions.to(device),
        part.to(device),
        as_tensor(rows),
        as_tensor(columns),
        as_tensor(targets),
        as_tensor(slots),
    )


def _packed_mask(part: Tensor, dtype: torch.dtype, *, additive: bool) -> Tensor:
    """(B, 1, L, L): causal, padding keys hidden, and the rejected answer blind to the chosen
    one, so each answer sees exactly the prompt and its own earlier tokens."""
    width = part.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=part.device).tril()
    queries, keys = part[:, :, None], part[:, None, :]
    allowed = causal & (keys >= 0) & ~((queries == 2) & (keys == 1))
    allowed |= torch.eye(width, dtype=torch.bool, device=part.device)  # no empty padding row
    allowed = allowed[:, None]
    if not additive:
        return allowed
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=part.device)
    return blocked.masked_fill(~allowed, torch.finfo(dtype).min)


def packed_attention(model: torch.nn.Module) -> str | None:
    """The model's attention implementation when it takes the packed layout's 4D mask."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    implementation = getattr(causal_lm.config, "_attn_implementation", None)
    return implementation if implementation in PACKED_ATTENTION else None


def pair_logps_packed(
    model: torch.nn.Module,
    pairs: list[EncodedPair],
    *,
    pad_id: int,
    chunk_tokens: int | None = None,
) -> PairLogps:
    """Prompt once, both answers after it in the SAME row: ``prompt | chosen | rejected``
    with position ids that restart the rejected answer where the prompt ends, and a mask that
    hides the chosen answer from the rejected one.

    One forward without a KV cache, so, unlike ``pair_logps_shared``, it runs under gradient
    checkpointing (a cache cannot be rebuilt in the backward pass). Needs an attention
    implementation that takes a 4D mask (sdpa, eager); otherwise the plain way.
    """
    parts = lm_parts(model)
    implementation = packed_attention(model)
    if parts is None or implementation is None:
        return pair_logps_concat(model, pairs, pad_id=pad_id, chunk_tokens=chunk_tokens)
    device = next(model.parameters()).device
    ids, positions, part, rows, columns, targets, slots = _packed_layout(pairs, pad_id, device)
    dtype = parts.head.weight.dtype if parts.head.weight.is_floating_point() else torch.float32
    mask = _packed_mask(part, dtype, additive=implementation == "eager")
    hidden = parts.decoder(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
    ).last_hidden_state
    logps = head_token_logps(parts, hidden[rows, columns], targets, chunk_tokens=chunk_tokens)
    sums = torch.zeros(2 * len(pairs), dtype=torch.float32, device=device).index_add(
        0, slots, logps
    )
    tokens = torch.tensor(
        [n for pair in pairs for n in (len(pair.chosen_ids), len(pair.rejected_ids))],
        device=device,
    )
    return PairLogps(sums[0::2], sums[1::2], tokens[0::2], tokens[1::2])


def pair_logps(
    model: torch.nn.Module,
    pairs: list[EncodedPair],
    *,
    pad_id: int,
    prefix_sharing: bool,
    checkpointing: bool = False,
) -> PairLogps:
    """Each pair's answer log-probs, the prompt read once when ``prefix_sharing``: through its
    KV cache, or, under gradient checkpointing (no cache), packed with both answers in a row."""
    if not prefix_sharing:
        return pair_logps_concat(model, pairs, pad_id=pad_id)
    if checkpointing:
        return pair_logps_packed(model, pairs, pad_id=pad_id)
    return pair_logps_shared(model, pairs, pad_id=pad_id)
