"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation", Eq. 7),
with mdistiller's reductions and linear warm-up.

With p = softmax(z / T) and g the ground-truth class, the binary target/non-target distribution is
b = [p_g, 1 - p_g] and the non-target distribution is p^ = softmax over the classes c != g of z_c / T
(computed, as in mdistiller, as softmax(z / T - 1000 * onehot(g))). Then

    TCKD = T^2 * KL(b_t || b_s),     NCKD = T^2 * KL(p^_t || p^_s),
    L_DKD = alpha * TCKD + beta * NCKD,

each KL summed over its classes and averaged over the batch. ``DKD`` multiplies the loss by
min(epoch / warmup, 1) (mdistiller's warm-up; defaults alpha 1, beta 8, T 4, warmup 20 for CIFAR-100).
With ``logit_stand`` both logit vectors are first standardized (``distiller_zoo/LS.py``), and, as in the
logit-standardization code, the temperature is then the run's base temperature (``--kd_T``, 2 in its recipe).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distiller_zoo.LS import logit_standardize
from distiller_zoo.terms import TermContext

# subtracted from the ground-truth logit so the non-target softmax puts (numerically) no mass on it
GT_MASK_MAGNITUDE = 1000.0


def binary_log_probs(logits: Tensor, gt_mask: Tensor, temperature: float) -> Tensor:
    """log [p_g, 1 - p_g] of softmax(logits / T), computed with log-sum-exp: (N, C) -> (N, 2)."""
    z = logits / temperature
    log_total = torch.logsumexp(z, dim=1)
    log_gt = (z * gt_mask).sum(dim=1) - log_total
    log_other = torch.logsumexp(z.masked_fill(gt_mask.bool(), float("-inf")), dim=1) - log_total
    return torch.stack([log_gt, log_other], dim=1)


def dkd_loss(
    logits_student: Tensor, logits_teacher: Tensor, target: Tensor, alpha: float, beta: float, temperature: float
) -> Tensor:
    """alpha * TCKD + beta * NCKD (each T^2-scaled, summed over classes, batch-averaged); teacher detached."""
    logits_teacher = logits_teacher.detach()
    gt_mask = F.one_hot(target, logits_student.shape[1]).to(logits_student.dtype)
    bsz = target.shape[0]
    tckd = F.kl_div(
        binary_log_probs(logits_student, gt_mask, temperature),
        binary_log_probs(logits_teacher, gt_mask, temperature),
        reduction="sum",
        log_target=True,
    )
    shift = GT_MASK_MAGNITUDE * gt_mask
    nckd = F.kl_div(
        F.log_softmax(logits_student / temperature - shift, dim=1),
        F.softmax(logits_teacher / temperature - shift, dim=1),
        reduction="sum",
    )
    return (alpha * tckd + beta * nckd) * temperature**2 / bsz


class DKD(nn.Module):
    """DKD loss of Zhao et al. (2022) with mdistiller's linear warm-up over the first ``warmup`` epochs, on standardized
    logits when ``logit_stand``."""

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: int = 20,
                 logit_stand: bool = False) -> None:
        super().__init__()
        if warmup <= 0:
            raise ValueError(f"DKD warmup must be a positive number of epochs, got {warmup}")
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.warmup = warmup
        self.logit_stand = logit_stand

    def forward(self, logits_student: Tensor, logits_teacher: Tensor, target: Tensor, epoch: int) -> Tensor:
        """DKD loss times min(epoch / warmup, 1), epoch counted from 1."""
        ramp = min(epoch / self.warmup, 1.0)
        if self.logit_stand:
            logits_student, logits_teacher = logit_standardize(logits_student), logit_standardize(logits_teacher)
        return ramp * dkd_loss(logits_student, logits_teacher, target, self.alpha, self.beta, self.temperature)


class DKDTerm(DKD):
    """``--relational dkd``: DKD (alpha 1, beta 8, T 4, 20-epoch warm-up) on the batch's logits, its labels and
    ``batch['epoch']`` (1-based pseudo-epoch); with ``--logit_stand`` on standardized logits at T = ``--kd_T`` (without
    it, T stays the published 4 whatever ``--kd_T`` says)."""

    ARGS = ("kd_T", "logit_stand")

    def __init__(self, ctx: TermContext, *, kd_T: float, logit_stand: bool = False) -> None:
        stand = bool(logit_stand)
        super().__init__(temperature=float(kd_T) if stand else 4.0, logit_stand=stand)

    def forward(self, logits_s: Tensor, logits_t: Tensor, labels: Tensor | None, batch: dict[str, Any]) -> Tensor:
        if labels is None or "epoch" not in batch:
            raise ValueError("DKDTerm needs the labels and batch['epoch']; its table row must say needs_labels and needs_epoch")
        return super().forward(logits_s, logits_t, labels, int(batch["epoch"]))
