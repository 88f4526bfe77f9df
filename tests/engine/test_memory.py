"""The memory plan against measured peaks, and the choices it makes from them.

Measured peaks are the bytes of live tensors (``TensorBytesTracker``, the CPU's stand-in for
``torch.cuda.max_memory_allocated``) during one real training step of the engine, plus the
weights; the estimate compared is the plan's, less its fixed allowance for the allocator.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from training.engine.config import DEFAULT_TARGET_MODULES
from training.engine.data import EncodedPair
from training.engine.errors import EngineError
from training.engine.logprobs import pair_logps
from training.engine.memory import (
    GIB,
    ModelShape,
    TensorBytesTracker,
    Workload,
    estimate,
    plan_memory,
)
from training.engine.modeling import gradient_checkpointing

LLAMA_1B = {
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 8192,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
}
LLAMA_8B = LLAMA_1B | {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "intermediate_size": 14336,
    "tie_word_embeddings": False,
}
LLAMA_70B = LLAMA_8B | {
    "hidden_size": 8192,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "intermediate_size": 28672,
}


def _small_llama(dtype: torch.dtype, *, layers: int = 4, vocab: int = 2000) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    )
    return LlamaForCausalLM(config).to(dtype).eval().requires_grad_(False)


def _random_pairs(count: int, prompt: int, answer: int, vocab: int) -> list[EncodedPair]:
    generator = torch.Generator().manual_seed(1)

    def ids(n: int) -> list[int]:
        return torch.randint(5, vocab, (n,), generator=generator).tolist()

    return [EncodedPair(i, i + 1, ids(prompt), ids(answer), ids(answer), "") for i in range(count)]


def _measured_step_peak(
    model: torch.nn.Module, pairs: list[EncodedPair], *, checkpointing: bool, lora_r: int
) -> int:
    """Weights plus the peak of tensors alive during one DPO + SFT step with AdamW."""
    model = get_peft_model(
        model,
        LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=list(DEFAULT_TARGET_MODULES)),
    )
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    with TensorBytesTracker() as tracker:
        with gradient_checkpointing(model, checkpointing):
            policy = pair_logps(
                model, pairs, pad_id=0, prefix_sharing=True, checkpointing=checkpointing
            )
            nll = -policy.chosen.sum() / policy.chosen_tokens.sum()
            dpo = -F.logsigmoid(0.1 * (policy.chosen - policy.rejected)).mean()
            (dpo + nll).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return weights + tracker.peak


@pytest.mark.parametrize(
    ("dtype", "checkpointing", "vocab"),
    [
        (torch.float32, False, 2000),
        (torch.float32, True, 2000),
        (torch.bfloat16, False, 2000),
        (torch.float32, False, 32000),  # the log-prob head's chunk dominates
    ],
    ids=["fp32", "fp32-checkpointing", "bf16", "fp32-large-vocabulary"],
)
def test_estimate_within_a_quarter_of_the_measured_peak(
    dtype: torch.dtype, checkpointing: bool, vocab: int
) -> None:
    lora_r, prompt, answer, batch = 8, 128, 32, 4
    model = _small_llama(dtype, vocab=vocab)
    shape = ModelShape.from_config(model.config.to_dict())
    measured = _measured_step_peak(
        model,
        _random_pairs(batch, prompt, answer, vocab),
        checkpointing=checkpointing,
        lora_r=lora_r,
    )
    workload = Workload(
        batch_size=batch,
        prompt_tokens=prompt,
        answer_tokens=answer,
        lora_r=lora_r,
        dtype_bytes=torch.empty(0, dtype=dtype).element_size(),
    )
    breakdown = estimate(shape, workload, micro_batch_size=batch, checkpointing=checkpointing)
    estimated = breakdown["total"] - breakdown["overhead"]
    assert 0.75 * measured <= estimated <= 1.25 * measured, (estimated, measured, breakdown)


def test_checkpointing_keeps_gradients_and_lowers_the_peak() -> None:
    pairs = _random_pairs(4, 128, 32, 2000)
    results = {}
    for checkpointing in (False, True):
        model = get_peft_model(
            _small_llama(torch.float32, layers=6),
            LoraConfig(r=8, target_modules=list(DEFAULT_TARGET_MODULES), init_lora_weights=False),
        )
        with TensorBytesTracker() as tracker, gradient_checkpointing(model, checkpointing) as on:
            policy = pair_logps(model, pairs, pad_id=0, prefix_sharing=False)
            (policy.chosen.sum() - 0.5 * policy.rejected.sum()).backward()
        assert on == checkpointing
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results[checkpointing] = (policy, grads, tracker.peak)
    plain, checkpointed = results[False], results[True]
    torch.testing.assert_close(checkpointed[0].chosen, plain[0].chosen, atol=1e-5, rtol=0)
    for name, grad in plain[1].items():
        torch.testing.assert_close(checkpointed[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert checkpointed[2] < 0.6 * plain[2], (checkpointed[2], plain[2])


def test_parameter_count_from_config_json_is_exact() -> None:
    model = _small_llama(torch.float32)
    shape = ModelShape.from_config(model.config.to_dict())
    assert shape.parameters() == sum(p.numel() for p in model.parameters())
    assert round(ModelShape.from_config(LLAMA_8B).parameters() / 1e9, 2) == 8.03
    assert round(ModelShape.from_config(LLAMA_1B | {"head_dim": 64}).parameters() / 1e9, 2) == 1.24


def _workload(**overrides) -> Workload:
    return Workload(
        **{"batch_size": 8, "prompt_tokens": 512, "answer_tokens": 128, "lora_r": 16} | overrides
    )


def test_llama_70b_in_4bit_with_checkpointing_fits_60_gib() -> None:
    plan = plan_memory(
        ModelShape.from_config(LLAMA_70B),
        _workload(quantize="4bit"),
        available_bytes=60 * GIB,
        available_source="--max-memory",
    )
    assert plan.fits and plan.gradient_checkpointing
    assert plan.estimate_bytes <= 60 * GIB
    assert "fits" in plan.summary() and "4-bit base" in plan.summary()


def test_plan_prefers_no_checkpointing_then_the_largest_micro_batch() -> None:
    shape = ModelShape.from_config(LLAMA_8B)
    roomy = plan_memory(shape, _workload(), available_bytes=200 * GIB)
    assert (roomy.micro_batch_size, roomy.gradient_checkpointing) == (8, False)
    tight = plan_memory(shape, _workload(), available_bytes=40 * GIB)
    assert not tight.gradient_checkpointing and 1 < tight.micro_batch_size < 8
    tighter = plan_memory(shape, _workload(), available_bytes=22 * GIB)
    assert tighter.gradient_checkpointing and tighter.estimate_bytes <= 22 * GIB
    fixed = plan_memory(shape, _workload(), micro_batch_size=2, available_bytes=200 * GIB)
    assert fixed.micro_batch_size == 2


def test_refusal_is_one_line_with_what_would_fit() -> None:
    with pytest.raises(EngineError) as refused:
        plan_memory(
            ModelShape.from_config(LLAMA_70B),
            _workload(),
            available_bytes=80 * GIB,
            available_source="GPU free memory",
        )
    message = str(refused.value)
    assert "\n" not in message
    assert "80.0 GiB is there (GPU free memory)" in message
    assert "--quantize 4bit" in message and "2 such GPUs" in message


def test_a_config_json_without_the_shape_trains_as_before(tmp_path) -> None:
    """No estimate, the caller's choices (else whole batches): the plan never blocks a model
    whose config.json names its sizes otherwise."""
    from training.engine.memory import MemoryPlan

    with pytest.raises(EngineError, match="cannot plan memory"):
        ModelShape.from_config({"model_type": "exotic", "vocab_size": 10})
    plan = MemoryPlan.without_estimate(
        "config.json has none of hidden_size", _workload(), "auto", None
    )
    assert (plan.micro_batch_size, plan.gradient_checkpointing, plan.fits) == (8, False, True)
    assert plan.summary().startswith("no memory estimate (config.json has none of hidden_size)")


def test_a_base_sharded_across_gpus_needs_its_share_of_the_weights_on_each() -> None:
    shape = ModelShape.from_config(LLAMA_70B)
    whole = estimate(shape, _workload(), micro_batch_size=1, checkpointing=True)
    sharded = estimate(
        shape, replace(_workload(), shards=2), micro_batch_size=1, checkpointing=True
    )
    # half the blocks, plus the head and two blocks gathered whole
    assert whole["weights"] / 2 < sharded["weights"] < 0.55 * whole["weights"]
    assert sharded["lora_and_optimizer"] == pytest.approx(whole["lora_and_optimizer"] / 2, 1e-6)
    with pytest.raises(EngineError):  # 70B in bf16 does not fit 80 GiB...
        plan_memory(shape, _workload(), available_bytes=80 * GIB)
    plan = plan_memory(shape, replace(_workload(), shards=2), available_bytes=80 * GIB)
    assert plan.fits  # ...but half of it does


def test_refusal_names_the_shard_flag_and_the_gpu_count() -> None:
    with pytest.raises(EngineError) as refused:
        plan_memory(ModelShape.from_config(LLAMA_70B), _workload(), available_bytes=80 * GIB)
    assert "2 such GPUs with the base sharded (--shard-base" in str(refused.value)
    assert "not in Patchwise" not in str(refused.value)
    # already sharded across 2 GPUs of 40 GiB: more of them
    with pytest.raises(EngineError) as refused:
        plan_memory(
            ModelShape.from_config(LLAMA_70B),
            replace(_workload(), shards=2),
            available_bytes=40 * GIB,
        )
    assert "5 such GPUs with the base sharded" in str(refused.value)
