"""Preference losses, with TRL's formulas and metric names.

With ``logratio = policy_logp - ref_logp`` per answer and
``delta = logratio_chosen - logratio_rejected``:

- sigmoid (DPO):  -(1-ε)·logσ(β·delta) - ε·logσ(-β·delta)        (ε > 0 is cDPO, as TRL
                  0.x had it; TRL 1.x ignores label smoothing for sigmoid)
- robust:         (-(1-ε)·logσ(β·delta) + ε·logσ(-β·delta)) / (1-2ε)
- hinge:          relu(1 - β·delta)
- ipo:            (logratio_chosen/len_chosen - logratio_rejected/len_rejected - 1/(2β))²
                  (per-token mean log-probs, as TRL and the IPO authors use)

Rewards are ``β·logratio`` (detached), as on TRL's dashboards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def preference_losses(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    loss: str,
    beta: float,
    label_smoothing: float = 0.0,
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
) -> Tensor:
    """One loss per pair (shape (B,)); average it for the batch loss."""
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    delta = chosen_logratio - rejected_logratio
    eps = label_smoothing
    if loss == "sigmoid":
        return -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
    if loss == "robust":
        return (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (
            1 - 2 * eps
        )
    if loss == "hinge":
        return torch.relu(1 - beta * delta)
    if loss == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("ipo needs the answers' token counts")
        ipo_delta = chosen_logratio / chosen_tokens.clamp(min=1) - rejected_logratio / (
            rejected_tokens.clamp(min=1)
        )
        return (ipo_delta - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown loss {loss!r}")


def reward_metrics(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
) -> dict[str, float]:
    """TRL's per-step reward and log-prob metrics, averaged over the batch."""
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "logps/chosen": policy_chosen.detach().mean().item(),
        "logps/rejected": policy_rejected.detach().mean().item(),
    }
