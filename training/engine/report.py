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
from training.engine.evaluate import regression_coverage
from training.engine.verify import summarize

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
    eval_rows: list[dict[str, Any]],
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    cache_hits: int,
    retain_examples: int,
    warmup_nll: list[float],
    loop: LoopResult,
    flagged: list[int],
    timings: dict[str, float],
    memory_plan: MemoryPlan,
) -> dict[str, Any]:
    """The report of one run, as report.json holds it (the adapter's folder is added on save).

    ``eval_rows`` are verify.py's: each prompt's answers, checks, verdict, margins and drift.
    """
    base = patch.base
    stopped_by = (
        loop.epoch_checks[-1]["by_rule"]
        if loop.stopped_reason == "all_flagged_fixed" and loop.epoch_checks
        else None
    )
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
                loop.stopped_reason, loop.stopped_epoch, len(flagged), config, stopped_by
            ),
            "stopped_by": stopped_by,
            "drift_tolerance": config.drift_tolerance,
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


RULE_WORDS = {
    "checks": "by their checks",
    "exact": "by matching their expected answer",
    "preference": "by the preference check",
}


def stop_explanation(
    reason: str,
    epoch: int,
    flagged: int,
    config: TrainConfig,
    stopped_by: dict[str, int] | None = None,
) -> str:
    """Why training stopped, in words; on an early stop, which rule each flagged prompt
    passed by ("2 by their checks, 1 by the preference check")."""
    if reason == "all_flagged_fixed":
        rules = ", ".join(
            f"{count} {RULE_WORDS[rule]}" for rule, count in sorted((stopped_by or {}).items())
        )
        return f"all {flagged} flagged prompts passed after epoch {epoch}" + (
            f" ({rules})" if rules else ""
        )
    if not config.early_stop:
        return f"ran the full budget of {config.epochs} epochs (early stopping is off)"
    if not flagged:
        return (
            f"ran the full budget of {config.epochs} epochs: no flagged eval prompt with "
            "checks, an expected answer or a preference pair to check"
        )
    return f"ran the full budget of {config.epochs} epochs; not every flagged prompt was fixed"
