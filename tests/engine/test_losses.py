"""The preference losses against their formulas, computed here independently, and TRL's."""

from __future__ import annotations

import math

import pytest
import torch

from training.engine.losses import preference_losses, reward_metrics

POLICY_CHOSEN = [-10.0, -22.5, -7.25]
POLICY_REJECTED = [-12.0, -20.0, -9.0]
REF_CHOSEN = [-11.0, -21.0, -8.0]
REF_REJECTED = [-11.5, -21.5, -8.5]
CHOSEN_TOKENS = [4, 9, 3]
REJECTED_TOKENS = [5, 8, 2]


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def expected_losses(loss: str, beta: float, eps: float) -> list[float]:
    values = []
    for pc, pr, rc, rr, lc, lr in zip(
        POLICY_CHOSEN,
        POLICY_REJECTED,
        REF_CHOSEN,
        REF_REJECTED,
        CHOSEN_TOKENS,
        REJECTED_TOKENS,
        strict=True,
    ):
        delta = (pc - rc) - (pr - rr)
        if loss == "sigmoid":
            values.append(-(1 - eps) * logsigmoid(beta * delta) - eps * logsigmoid(-beta * delta))
        elif loss == "robust":
            values.append(
                (-(1 - eps) * logsigmoid(beta * delta) + eps * logsigmoid(-beta * delta))
                / (1 - 2 * eps)
            )
        elif loss == "hinge":
            values.append(max(0.0, 1 - beta * delta))
        elif loss == "ipo":
            values.append(((pc - rc) / lc - (pr - rr) / lr - 1 / (2 * beta)) ** 2)
    return values


@pytest.mark.parametrize(
    ("loss", "beta", "eps"),
    [
        ("sigmoid", 0.1, 0.0),
        ("sigmoid", 0.5, 0.2),  # cDPO
        ("robust", 0.1, 0.1),
        ("robust", 0.3, 0.0),
        ("hinge", 0.1, 0.0),
        ("hinge", 2.0, 0.0),
        ("ipo", 0.1, 0.0),
        ("ipo", 1.0, 0.0),
    ],
)
def test_loss_matches_its_formula(loss: str, beta: float, eps: float) -> None:
    got = preference_losses(
        torch.tensor(POLICY_CHOSEN),
        torch.tensor(POLICY_REJECTED),
        torch.tensor(REF_CHOSEN),
        torch.tensor(REF_REJECTED),
        loss=loss,
        beta=beta,
        label_smoothing=eps,
        chosen_tokens=torch.tensor(CHOSEN_TOKENS),
        rejected_tokens=torch.tensor(REJECTED_TOKENS),
    )
    assert got.tolist() == pytest.approx(expected_losses(loss, beta, eps), rel=1e-5)


def test_reward_metrics_use_trl_names_and_values() -> None:
    metrics = reward_metrics(
        torch.tensor(POLICY_CHOSEN),
        torch.tensor(POLICY_REJECTED),
        torch.tensor(REF_CHOSEN),
        torch.tensor(REF_REJECTED),
        beta=0.1,
    )
    chosen = [0.1 * (p - r) for p, r in zip(POLICY_CHOSEN, REF_CHOSEN, strict=True)]
    rejected = [0.1 * (p - r) for p, r in zip(POLICY_REJECTED, REF_REJECTED, strict=True)]
    assert metrics["rewards/chosen"] == pytest.approx(sum(chosen) / 3)
    assert metrics["rewards/rejected"] == pytest.approx(sum(rejected) / 3)
    assert metrics["rewards/margins"] == pytest.approx((sum(chosen) - sum(rejected)) / 3)
    assert metrics["rewards/accuracies"] == pytest.approx(
        sum(c > r for c, r in zip(chosen, rejected, strict=True)) / 3
    )
    assert metrics["logps/chosen"] == pytest.approx(sum(POLICY_CHOSEN) / 3)
    assert metrics["logps/rejected"] == pytest.approx(sum(POLICY_REJECTED) / 3)
