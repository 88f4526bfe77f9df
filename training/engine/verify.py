"""Verdicts on the eval prompts: the text rule, the preference check and regression drift.

The rule itself is checks.py's (pure, shared with the web app). This module measures what it
needs from the model:

- before training (the patch still off): each flagged and held-out prompt's preference pair
  (a flagged prompt's training pair, else the eval line's expected answer against its
  ``rejected`` one) and the reference's margin on it, and each
  regression prompt's pre-patch answer with its mean per-token log-prob;
- after every epoch: the figures early stopping decides on (``check_epoch``);
- after training: every row's verdict for report.json (``rows``).

A flagged prompt passes by its checks when it has some, else by exact match with its expected
answer, else (no text rule, but a pair) by the preference check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from training.engine import distributed
from training.engine.checks import (
    describe_rule,
    has_checks,
    prefers_good_answer,
    regression_changed,
    verdict,
    within_tolerance,
)
from training.engine.config import TrainConfig
from training.engine.data import EncodedPair, EvalItem, encode_pairs
from training.engine.errors import EngineError
from training.engine.logprobs import completion_logps_concat, pair_logps

if TYPE_CHECKING:
    from training.engine.lora import Patch


def text_rule(item: EvalItem) -> bool:
    """Whether the item's answer can be judged by its text (checks, or an expected answer)."""
    return has_checks(item.must_include, item.must_not_include) or item.expected is not None


def item_verdict(item: EvalItem, answer: str):
    return verdict(
        answer,
        expected=item.expected,
        must_include=item.must_include,
        must_not_include=item.must_not_include,
    )


@dataclass
class Verification:
    """What the verdicts need, measured once before training."""

    items: list[EvalItem]
    pairs: dict[int, EncodedPair]  # eval item index -> its preference pair
    margin_ref: dict[int, float]
    retain: dict[int, tuple[list[int], list[int]]]  # regression index -> (prompt, answer) ids
    logp_ref: dict[int, float]  # regression index -> mean log-prob per token, before
    config: TrainConfig
    pad_id: int
    batch_size: int  # sequences per forward pass (the memory plan's micro-batch)

    @property
    def flagged(self) -> list[int]:
        """Flagged prompts that can be decided (a text rule or a preference pair)."""
        return [
            index
            for index, item in enumerate(self.items)
            if item.kind == "flagged" and (text_rule(item) or index in self.pairs)
        ]

    # ------------------------------------------------------------------ measuring

    def margins(self, model: torch.nn.Module) -> dict[int, float]:
        """chosen - rejected log-prob of every preference pair under ``model``."""
        indexes = sorted(self.pairs)
        margins: dict[int, float] = {}
        size = self.batch_size
        for start in range(0, len(indexes), size):
            chunk = indexes[start : start + size]
            with distributed.no_grad():
                logps = pair_logps(
                    model,
                    [self.pairs[i] for i in chunk],
                    pad_id=self.pad_id,
                    prefix_sharing=self.config.prefix_sharing,
                )
            values = (logps.chosen.float() - logps.rejected.float()).tolist()
            margins.update(zip(chunk, values, strict=True))
        return margins

    def mean_logps(self, model: torch.nn.Module) -> dict[int, float]:
        """Mean per-token log-prob of each regression prompt's pre-patch answer."""
        indexes = sorted(self.retain)
        means: dict[int, float] = {}
        size = self.batch_size
        for start in range(0, len(indexes), size):
            chunk = indexes[start : start + size]
            with distributed.no_grad():
                logp, tokens = completion_logps_concat(
                    model,
                    [self.retain[i][0] for i in chunk],
                    [self.retain[i][1] for i in chunk],
                    pad_id=self.pad_id,
                )
            values = (logp.float() / tokens.clamp(min=1)).tolist()
            means.update(zip(chunk, values, strict=True))
        return means

    def drifts(self, model: torch.nn.Module) -> dict[int, float]:
        after = self.mean_logps(model)
        return {index: after[index] - self.logp_ref[index] for index in after}

    # ------------------------------------------------------------------ deciding

    def check_epoch(
        self,
        model: torch.nn.Module,
        answer: Callable[[list[EvalItem]], list[str]],
        *,
        epoch: int,
        step: int,
    ) -> dict:
        """The three figures after an epoch, and whether every flagged prompt passes;
        ``answer`` gives greedy answers to eval items (on every rank the same).

        Returns {"epoch", "step", "flagged_fixed", "flagged", "by_rule", "preferring",
        "with_pair", "within_tolerance", "regression", "all_flagged_pass"}.
        """
        flagged = self.flagged
        by_text = [i for i in flagged if text_rule(self.items[i])]
        answers = answer([self.items[i] for i in by_text]) if by_text else []
        passed = {
            i: bool(item_verdict(self.items[i], answer).passed)
            for i, answer in zip(by_text, answers, strict=True)
        }
        margins = self.margins(model)
        prefers = {i: bool(prefers_good_answer(self.margin_ref[i], margins[i])) for i in self.pairs}
        by_rule: dict[str, int] = {}
        for i in flagged:
            item = self.items[i]
            rule = (
                ("checks" if has_checks(item.must_include, item.must_not_include) else "exact")
                if i in passed
                else "preference"
            )
            ok = passed[i] if i in passed else prefers[i]
            if ok:
                by_rule[rule] = by_rule.get(rule, 0) + 1
        fixed = sum(by_rule.values())
        drifts = self.drifts(model) if self.retain else {}
        tolerance = self.config.drift_tolerance
        return {
            "epoch": epoch,
            "step": step,
            "flagged_fixed": fixed,
            "flagged": len(flagged),
            "by_rule": by_rule,
            "preferring": sum(prefers.values()),
            "with_pair": len(prefers),
            "within_tolerance": sum(bool(within_tolerance(d, tolerance)) for d in drifts.values()),
            "regression": len(drifts),
            "all_flagged_pass": bool(flagged) and fixed == len(flagged),
        }

    def rows(
        self,
        before: list[str],
        after: list[str],
        margin_policy: dict[int, float],
        drifts: dict[int, float],
    ) -> list[dict[str, Any]]:
        """report.json's eval rows: the old fields (``fixed`` is still the verdict) and the
        checks, what decided them, the preference margins and the drift."""
        rows = []
        tolerance = self.config.drift_tolerance
        for index, (item, answer_before, answer_after) in enumerate(
            zip(self.items, before, after, strict=True)
        ):
            check_before = item_verdict(item, answer_before)
            check_after = item_verdict(item, answer_after)
            identical = answer_after == answer_before
            ref, policy = self.margin_ref.get(index), margin_policy.get(index)
            prefers = prefers_good_answer(ref, policy)
            drift = drifts.get(index)
            row: dict[str, Any] = {
                "line": item.line,
                "prompt": item.prompt,
                "kind": item.kind,
                "expected": item.expected,
                "topic": item.topic,
                "tags": item.tags,
                "before": answer_before,
                "after": answer_after,
                "checks": {
                    "must_include": item.must_include,
                    "must_not_include": item.must_not_include,
                },
                "rule": describe_rule(
                    expected=None if item.kind == "regression" else item.expected,
                    must_include=item.must_include,
                    must_not_include=item.must_not_include,
                ),
                "verdict": check_after.to_dict(),
                "passed": check_after.passed,
                "margin_ref": ref,
                "margin_policy": policy,
                "prefers": prefers,
                "drift": drift,
                "identical": identical,
            }
            if item.kind == "regression":
                if check_after.rule != "checks":
                    row["rule"] = (
                        f"unchanged: the same answer, or its pre-patch answer drifted by at most "
                        f"{tolerance:g} nats per token"
                    )
                    row["verdict"] = {**row["verdict"], "passed": None, "rule": "drift"}
                    row["passed"] = None
                changed = regression_changed(
                    identical=identical, check=check_after, drift=drift, tolerance=tolerance
                )
                row |= {
                    "within_tolerance": within_tolerance(drift, tolerance),
                    "changed": changed,
                    "fixed_before": None,
                    "fixed": not changed,
                }
            else:
                text = check_after.rule != "none"
                row |= {
                    "changed": not identical,
                    "fixed_before": check_before.passed if text else None,
                    "fixed": check_after.passed if text else prefers,
                    "decided_by": (check_after.rule if text else "preference")
                    if (text or prefers is not None)
                    else None,
                }
                if not text and prefers is not None:
                    row["rule"] = (
                        "prefers the good answer: the patched model's log-prob margin "
                        "(expected - rejected) is positive and above the deployed model's"
                    )
            rows.append(row)
        return rows


def prepare(
    *,
    patch: Patch,
    items: list[EvalItem],
    raw_pairs: list[dict[str, Any]],
    encoded_pairs: list[EncodedPair],
    retain: dict[int, tuple[list[int], list[int]]],
    config: TrainConfig,
    batch_size: int,
    max_length: int,
    max_prompt_length: int | None,
) -> Verification:
    """Measure, with the patch off, what the verdicts compare against."""
    tokenizer = patch.base.tokenizer
    pairs: dict[int, EncodedPair] = {}
    for index, item in enumerate(items):
        if item.kind == "regression":
            continue
        # a flagged prompt's own training pair (the chosen and rejected answers it was
        # patched on), else the eval line's expected answer against its rejected one
        trained = next(
            (pair for pair in encoded_pairs if raw_pairs[pair.index]["prompt"] == item.prompt),
            None,
        )
        if item.kind == "flagged" and trained is not None:
            pairs[index] = trained
        elif item.expected is not None and item.rejected is not None:
            raw = {"prompt": item.prompt, "chosen": item.expected, "rejected": item.rejected}
            try:
                (pairs[index],) = encode_pairs(
                    tokenizer,
                    [raw],
                    max_length=max_length,
                    max_prompt_length=max_prompt_length,
                    source=f"eval line {item.line}",
                )
            except EngineError:  # a prompt too long to weigh two answers: no preference check
                continue
    verification = Verification(
        items=items,
        pairs=pairs,
        margin_ref={},
        retain=retain,
        logp_ref={},
        config=config,
        pad_id=tokenizer.pad_token_id,
        batch_size=batch_size,
    )
    with patch.reference() as reference:
        verification.margin_ref = verification.margins(reference)
        verification.logp_ref = verification.mean_logps(reference)
    return verification


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts a user reads first: flagged/held-out fixed (and by which rule), preferring the
    good answer, regression identical and within tolerance."""
    summary: dict[str, dict[str, int]] = {}
    for kind in ("flagged", "heldout", "regression"):
        of_kind = [row for row in rows if row["kind"] == kind]
        if not of_kind:
            continue
        counts = {
            "total": len(of_kind),
            "with_expected": sum(1 for row in of_kind if row["expected"] is not None),
            "with_rule": sum(1 for row in of_kind if row["fixed"] is not None),
            "fixed": sum(1 for row in of_kind if row["fixed"]),
            "changed": sum(1 for row in of_kind if row["changed"]),
            "unchanged": sum(1 for row in of_kind if not row["changed"]),
            "identical": sum(1 for row in of_kind if row.get("identical")),
            "with_pair": sum(1 for row in of_kind if row.get("prefers") is not None),
            "preferring": sum(1 for row in of_kind if row.get("prefers")),
        }
        if kind == "regression":
            counts["within_tolerance"] = counts["unchanged"]
        summary[kind] = counts
    return summary
