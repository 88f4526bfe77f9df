"""Prefix sharing is an optimisation, not a change of maths: same log-probs, same gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from training.engine.data import encode_pairs
from training.engine.logprobs import (
    completion_logps_concat,
    completion_logps_full_vocab,
    lm_parts,
    logit_chunk_tokens,
    pair_logps_concat,
    pair_logps_packed,
    pair_logps_shared,
)
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


@pytest.mark.parametrize(
    ("chunk_tokens", "head_passes"),
    [(None, 1), (13, 2 * 4)],  # 52 answer tokens: one chunk, or four chunks of 13
    ids=["one_chunk_kept", "several_chunks_recomputed"],
)
def test_head_is_recomputed_only_when_the_logits_come_in_several_chunks(
    tiny_model_dir: Path, chunk_tokens: int | None, head_passes: int
) -> None:
    """One chunk's logits are kept for the backward pass (rebuilding them there would cost a
    pass of the head for the same peak); several chunks are each rebuilt there, so no more
    than one chunk's logits exist at once."""
    base = load_base(tiny_model_dir)
    encoded = encode_pairs(base.tokenizer, PLAIN_PAIRS, max_length=256, max_prompt_length=128)
    model = get_peft_model(base.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    calls = []
    hook = lm_parts(model).head.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = pair_logps_shared(
            model, encoded, pad_id=base.tokenizer.pad_token_id, chunk_tokens=chunk_tokens
        )
        assert int(out.chosen_tokens.sum() + out.rejected_tokens.sum()) == 52
        (out.chosen.sum() - out.rejected.sum()).backward()
    finally:
        hook.remove()
        model.unload()
    assert len(calls) == head_passes
