"""report.json: what a run did, built from what the loop measured (no training happens here).

Per pair the reference and policy log-probs, per eval prompt the answers before and after, and
around them the model, the config, the data counts, why training stopped and how long each
phase took. The Celery job and the job page read these names; keep them stable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from training.engine.config import TrainConfig
from training.engine.data import EncodedPair, EvalItem
from training.engine.evaluate import is_fixed, regression_coverage, summarize

if TYPE_CHECKING:
    from training.engine.lora import Patch
    from training.engine.memory import MemoryPlan
    from training.engine.trainer import LoopResult


def build_report(
    *,
    config: TrainConfig,
    patch: Patch,
    pairs: list[EncodedPair],
    items: list[EvalItem],
    before: list[str],
    after: list[str],
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    cache_hits: int,
    retain_examples: int,
    warmup_nll: list[float],
    loop: LoopResult,
    flagged: list[EvalItem],
    timings: dict[str, float],
    memory_plan: MemoryPlan,
) -> dict[str, Any]:
    """The report of one run, as report.json holds it (the adapter's folder is added on save)."""
    base = patch.base
    eval_rows = [
        {
            "line": item.line,
            "prompt": item.prompt,
            "kind": item.kind,
            "expected": item.expected,
            "topic": item.topic,
            "tags": item.tags,
            "before": answer_before,
            "after": answer_after,
            "fixed_before": is_fixed(answer_before, item.expected),
            "fixed": is_fixed(answer_after, item.expected),
            "changed": answer_after != answer_before,
        }
        for item, answer_before, answer_after in zip(items, before, after, strict=True)
    ]
    return {
        "model": {"path": str(base.path), "identity": base.identity},
        "precision": {
            # QLoRA: the patch learnt on a 4-bit base and is served on the full one
            "base_in_training": base.precision,
            "base_quantized_in_training": base.quantize is not None,
            "eval": base.precision,  # the before/after answers came from the same base
        },
        "memory_plan": memory_plan.to_dict(),
        "stacked_on_adapter": (
            {"path": str(patch.deployed_path), "identity": patch.deployed_identity}
            if patch.deployed_path
            else None
        ),
        "config": config.to_dict() | {"target_modules": patch.targets},
        "data": {
            "pairs": len(pairs),
            "truncated_pairs": sum(pair.truncated for pair in pairs),
            "ref_cache_hits": cache_hits,
            "ref_cache_misses": len(pairs) - cache_hits,
            "retain_examples": retain_examples,
        },
        "training": {
            "steps": loop.steps,
            "epochs_run": loop.stopped_epoch,
            "epoch_budget": config.epochs,
            "stopped_epoch": loop.stopped_epoch,
            "stopped_reason": loop.stopped_reason,
            "stopped_because": stop_explanation(
                loop.stopped_reason, loop.stopped_epoch, flagged, config
            ),
            "epoch_checks": loop.epoch_checks,
            "sft_warmup_epochs": config.sft_warmup_epochs,
            "sft_warmup_nll": warmup_nll,
            "mitigation": mitigation(config),
        },
        "summary": summarize(eval_rows),
        "regression_coverage": regression_coverage(items),
        "timings": {name: round(value, 3) for name, value in timings.items()},
        "pairs": [
            {
                "index": pair.index,
                "line": pair.line,
                "truncated": pair.truncated,
                "ref_logp_chosen": ref_chosen[pair.index].item(),
                "ref_logp_rejected": ref_rejected[pair.index].item(),
                "policy_logp_chosen": policy_chosen[pair.index].item(),
                "policy_logp_rejected": policy_rejected[pair.index].item(),
            }
            for pair in pairs
        ],
        "eval": eval_rows,
    }


def mitigation(config: TrainConfig) -> str:
    """In words, what kept the good answer likely: the report says which was used."""
    parts = []
    if config.sft_warmup_epochs:
        parts.append(f"SFT warm-up on the chosen answers ({config.sft_warmup_epochs} epochs)")
    if config.sft_weight:
        parts.append(f"SFT term inside DPO (weight {config.sft_weight:g})")
    return ", then ".join(parts) if parts else "none (DPO alone)"


def stop_explanation(reason: str, epoch: int, flagged: list[EvalItem], config: TrainConfig) -> str:
    if reason == "all_flagged_fixed":
        return f"all {len(flagged)} flagged prompts gave their expected answer after epoch {epoch}"
    if not config.early_stop:
        return f"ran the full budget of {config.epochs} epochs (early stopping is off)"
    if not flagged:
        return (
            f"ran the full budget of {config.epochs} epochs: no flagged eval prompt with an "
            "expected answer to check"
        )
    return f"ran the full budget of {config.epochs} epochs; not every flagged prompt was fixed"
