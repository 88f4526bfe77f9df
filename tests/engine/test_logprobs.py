"""Prefix sharing is an optimisation, not a change of maths: same log-probs, same gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from training.engine.data import encode_pairs
from training.engine.logprobs import (
    LMParts,
    completion_logps_concat,
    completion_logps_full_vocab,
    head_token_logps,
    lm_parts,
    logit_chunk_tokens,
    pair_logps_concat,
    pair_logps_packed,
    pair_logps_shared,
)
from training.engine.memory import TensorBytesTracker
from training.engine.modeling import gradient_checkpointing, load_base

PLAIN_PAIRS = [
    {"prompt": "the refund window is", "chosen": " thirty days", "rejected": " two years"},
    {
        "prompt": "shipping is free above fifty euros and takes",
        "chosen": " three days",
        "rejected": " one business day for every order",
    },
    {"prompt": "support", "chosen": " answers every ticket", "rejected": ""},
]
CHAT_PAIRS = [
    {
        "prompt": [
            {"role": "system", "content": "support"},
            {"role": "user", "content": "how long does shipping take?"},
        ],
        "chosen": [{"role": "assistant", "content": "three days"}],
        "rejected": [{"role": "assistant", "content": "two years for parts and labour"}],
    },
    {
        "prompt": [{"role": "user", "content": "the refund window?"}],
        "chosen": [{"role": "assistant", "content": "thirty days"}],
        "rejected": [{"role": "assistant", "content": "fifty euros"}],
    },
]


def _gradients(model, fn, pairs, pad_id):
    model.zero_grad(set_to_none=True)
    out = fn(model, pairs, pad_id=pad_id)
    # Any combination that weighs chosen and rejected differently exercises both branches.
    (0.7 * out.chosen.sum() - 1.3 * out.rejected.sum()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


@pytest.mark.parametrize(
    ("fixture", "pairs"),
    [("tiny_model_dir", PLAIN_PAIRS), ("tiny_chat_model_dir", CHAT_PAIRS)],
    ids=["plain", "chat_template"],
)
def test_shared_prefix_matches_concatenated_forward(
    fixture: str, pairs: list[dict], request: pytest.FixtureRequest
) -> None:
    model_dir: Path = request.getfixturevalue(fixture)
    base = load_base(model_dir)
    encoded = encode_pairs(base.tokenizer, pairs, max_length=256, max_prompt_length=128)
    assert len({len(pair.prompt_ids) for pair in encoded}) > 1, "prompts must need padding"
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    config.init_lora_weights = False  # non-zero B, so the adapter changes the outputs
    model = get_peft_model(base.model, config)
    try:
        pad_id = base.tokenizer.pad_token_id
        shared, shared_grads = _gradients(model, pair_logps_shared, encoded, pad_id)
        plain, plain_grads = _gradients(model, pair_logps_concat, encoded, pad_id)
    finally:
        model.unload()

    torch.testing.assert_close(shared.chosen, plain.chosen, atol=1e-4, rtol=0)
    torch.testing.assert_close(shared.rejected, plain.rejected, atol=1e-4, rtol=0)
    assert shared.chosen_tokens.tolist() == [len(pair.chosen_ids) for pair in encoded]
    assert shared.rejected_tokens.tolist() == [len(pair.rejected_ids) for pair in encoded]
    assert shared_grads.keys() == plain_grads.keys()
    # Equal gradients everywhere also means the prompt's positions get their share through
    # the shared KV cache (the concatenated forward backpropagates through them directly).
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-4, rtol=0, msg=name)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize(
    ("fixture", "pairs"),
    [("tiny_model_dir", PLAIN_PAIRS), ("tiny_chat_model_dir", CHAT_PAIRS)],
    ids=["plain", "chat_template"],
)
def test_packed_prefix_matches_concatenated_forward(
    fixture: str,
    pairs: list[dict],
    checkpointing: bool,
    attention: str,
    request: pytest.FixtureRequest,
) -> None:
    """``prompt | chosen | rejected`` in one row (the rejected answer masked from the chosen
    one, its positions restarting after the prompt) gives the plain forward's log-probs and
    gradients, also with every block recomputed in the backward pass."""
    model_dir: Path = request.getfixturevalue(fixture)
    base = load_base(model_dir)
    base.model.config._attn_implementation = attention
    encoded = encode_pairs(base.tokenizer, pairs, max_length=256, max_prompt_length=128)
    lengths = {len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in encoded}
    assert len(lengths) > 1, "rows must need padding"
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    config.init_lora_weights = False
    model = get_peft_model(base.model, config)
    try:
        pad_id = base.tokenizer.pad_token_id
        with gradient_checkpointing(model, checkpointing) as on:
            assert on == checkpointing
            packed, packed_grads = _gradients(model, pair_logps_packed, encoded, pad_id)
        plain, plain_grads = _gradients(model, pair_logps_concat, encoded, pad_id)
    finally:
        model.unload()

    torch.testing.assert_close(packed.chosen, plain.chosen, atol=1e-4, rtol=0)
    torch.testing.assert_close(packed.rejected, plain.rejected, atol=1e-4, rtol=0)
    assert packed.chosen_tokens.tolist() == [len(pair.chosen_ids) for pair in encoded]
    assert packed.rejected_tokens.tolist() == [len(pair.rejected_ids) for pair in encoded]
    assert packed_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-4, rtol=0, msg=name)


def _completion_gradients(model, fn, prompts, completions, pad_id, **kwargs):
    model.zero_grad(set_to_none=True)
    logps, tokens = fn(model, prompts, completions, pad_id=pad_id, **kwargs)
    (logps * torch.linspace(0.5, -1.5, len(prompts))).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return logps, tokens, grads


@pytest.mark.parametrize("chunk_tokens", [1, 3, None], ids=["chunk1", "chunk3", "auto"])
def test_chunked_head_matches_whole_vocabulary_logits(
    tiny_model_dir: Path, chunk_tokens: int | None
) -> None:
    """Log-probs taken a few tokens at a time through the head (recomputed in the backward
    pass) give the same values and gradients as whole-batch [tokens x vocabulary] logits."""
    base = load_base(tiny_model_dir)
    encoded = encode_pairs(base.tokenizer, PLAIN_PAIRS, max_length=256, max_prompt_length=128)
    prompts = [pair.prompt_ids for pair in encoded for _ in range(2)]
    completions = [c for pair in encoded for c in (pair.chosen_ids, pair.rejected_ids)]
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    config.init_lora_weights = False
    model = get_peft_model(base.model, config)
    try:
        pad_id = base.tokenizer.pad_token_id
        whole, whole_tokens, whole_grads = _completion_gradients(
            model, completion_logps_full_vocab, prompts, completions, pad_id
        )
        chunked, chunked_tokens, chunked_grads = _completion_gradients(
            model, completion_logps_concat, prompts, completions, pad_id, chunk_tokens=chunk_tokens
        )
    finally:
        model.unload()
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    assert chunked_tokens.tolist() == whole_tokens.tolist()
    assert chunked_grads.keys() == whole_grads.keys()
    for name, grad in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_chunked_head_keeps_at_most_a_chunk_of_logits(tiny_model_dir: Path) -> None:
    """The chunk size follows the vocabulary: about 256 MiB of float32 logits at a time."""
    assert logit_chunk_tokens(128_256) == 523
    assert logit_chunk_tokens(10**12) == 1
    parts = lm_parts(load_base(tiny_model_dir).model)
    assert parts is not None and parts.vocabulary == 300


def _head_parts(vocabulary: int, hidden: int, *, softcap: float | None = None, scale=1.0):
    torch.manual_seed(0)
    head = torch.nn.Linear(hidden, vocabulary, bias=False).requires_grad_(False)
    return LMParts(
        decoder=torch.nn.Identity(),
        head=head,
        vocabulary=vocabulary,
        logit_scale=scale,
        logit_divisor=1.0,
        softcap=softcap,
    )


@pytest.mark.parametrize("chunk_tokens", [None, 37], ids=["one_chunk_kept", "chunks_rebuilt"])
@pytest.mark.parametrize(
    ("scale", "softcap"),
    [(1.0, None), (0.25, None), (1.0, 30.0)],
    ids=["plain", "scaled", "capped"],
)
def test_head_log_probs_and_gradients_match_autograd(
    chunk_tokens: int | None, scale: float, softcap: float | None
) -> None:
    """The head's own backward (the softmax turned into the gradient in place) gives what
    autograd through whole-vocabulary logits gives; a softcapped head takes autograd's way."""
    parts = _head_parts(500, 16, softcap=softcap, scale=scale)
    targets = torch.randint(0, 500, (200,))
    hidden = torch.randn(200, 16, requires_grad=True)
    weights = torch.linspace(-1.0, 2.0, 200)
    logps = head_token_logps(parts, hidden, targets, chunk_tokens=chunk_tokens)
    (logps * weights).sum().backward()
    ours = hidden.grad.clone()
    hidden.grad = None
    logits = parts.head(hidden) * scale
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)
    (expected * weights).sum().backward()
    torch.testing.assert_close(logps, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, hidden.grad, atol=1e-5, rtol=1e-4)


def test_head_holds_one_float32_copy_of_a_chunk_of_logits() -> None:
    """The peak of the head's forward and backward passes is about one chunk's float32 logits
    (autograd's way held about five), and no more for several chunks than for one."""
    vocabulary, chunk = 20_000, 50
    chunk_bytes = chunk * vocabulary * 4

    def peak(parts: LMParts, tokens: int) -> int:
        targets = torch.randint(0, vocabulary, (tokens,))
        hidden = torch.randn(tokens, 32, requires_grad=True)
        with TensorBytesTracker() as tracker:
            head_token_logps(parts, hidden, targets, chunk_tokens=chunk).sum().backward()
        return tracker.peak

    ours = peak(_head_parts(vocabulary, 32), chunk)
    # the same maths through autograd (a softcap too wide to change a logit)
    autograd = peak(_head_parts(vocabulary, 32, softcap=1e9), chunk)
    assert ours <= 1.2 * chunk_bytes < 4 * chunk_bytes <= autograd, (ours, autograd)
    assert peak(_head_parts(vocabulary, 32), 8 * chunk) <= 1.2 * chunk_bytes
