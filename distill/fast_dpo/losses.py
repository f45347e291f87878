"""The DPO-family losses of TRL 1.16's DPOTrainer, as a pure function of per-sequence log-probs.

    loss, chosen_rewards, rejected_rewards = preference_loss(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_counts, rejected_counts,
        loss_types=["sigmoid", "sft"], loss_weights=[1.0, 0.2], beta=0.1)

TRL computes these inline in `DPOTrainer._compute_loss`, right after its own model forward, so they cannot be
called on log-probs that came from elsewhere (a packed forward, a cache). The formulas below are copied from
TRL 1.16 (dpo_trainer.py, `_compute_loss`, reverse-KL branch) and tests/test_fast_dpo_trl.py checks them against
TRL's own code path on the same batch for every type listed here. RPO's SFT term is TRL's "sft" loss type,
weighted with loss_weights (TRL 1.16 has no rpo_alpha).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from eval.io import DistillError

from .config import SUPPORTED_LOSS_TYPES, check_loss_config  # noqa: F401 - re-exported


def preference_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_counts: torch.Tensor,
    rejected_counts: torch.Tensor,
    *,
    loss_types: Sequence[str] = ("sigmoid",),
    loss_weights: Sequence[float] | None = None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scalar loss (each type's mean over pairs, weighted and summed) and the detached per-pair rewards
    beta * (logp - ref_logp) for chosen and rejected. `*_counts` are completion token counts per sequence (IPO
    averages per token; the SFT term is a mean over all chosen tokens of the batch)."""
    check_loss_config(loss_types, loss_weights, label_smoothing)
    weights = loss_weights if loss_weights is not None else [1.0] * len(loss_types)
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    delta = chosen_logratios - rejected_logratios

    loss = 0.0
    for loss_type, weight in zip(loss_types, weights, strict=True):
        if loss_type == "sigmoid":
            per_pair = -F.logsigmoid(beta * delta)
        elif loss_type == "hinge":
            per_pair = torch.relu(1 - beta * delta)
        elif loss_type == "ipo":
            # TRL normalises IPO by completion length (confirmed with the IPO authors, per TRL's comment)
            ipo_delta = chosen_logratios / chosen_counts.clamp(min=1.0) - rejected_logratios / rejected_counts.clamp(
                min=1.0
            )
            per_pair = (ipo_delta - 1 / (2 * beta)) ** 2
        elif loss_type == "robust":
            clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
            flipped = -label_smoothing * F.logsigmoid(-beta * delta)
            per_pair = (clean - flipped) / (1 - 2 * label_smoothing)
        elif loss_type == "sft":
            # TRL: -chosen_per_token_logps[chosen_mask].mean(), i.e. total chosen log-prob over total chosen tokens
            per_pair = (-chosen_logps.sum() / chosen_counts.sum()).expand(chosen_logps.shape[0])
        else:  # check_loss_config ruled this out; kept so a new type cannot fall through silently
            raise DistillError(f"unknown loss type {loss_type!r}")
        loss = loss + per_pair.mean() * weight

    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
