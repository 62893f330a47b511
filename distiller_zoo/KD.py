"""Vanilla knowledge distillation (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in a Neural Network").

L_KD = T^2 * KL( softmax(z_t / T) || softmax(z_s / T) ), summed over classes and averaged over the
batch ("batchmean", not the element-wise mean). The T^2 factor keeps the gradient magnitude of the
soft term independent of T (Hinton et al., Sec. 2). ``DistillKL(T, standardize=True)`` first z-scores both logit
vectors (logit standardization, ``distiller_zoo/LS.py``; ``--logit_stand``).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from distiller_zoo.LS import logit_standardize


def distill_kl(y_s: Tensor, y_t: Tensor, T: float) -> Tensor:
    """T^2 * KL(softmax(y_t/T) || softmax(y_s/T)), summed over classes, mean over the batch.

    The teacher logits are a target: they are detached, so no gradient ever reaches them.
    """
    log_p_s = F.log_softmax(y_s / T, dim=1)
    log_p_t = F.log_softmax(y_t.detach() / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T**2)


class DistillKL(nn.Module):
    """KD loss of Hinton et al. (2015): T^2-scaled, batch-averaged KL between softened distributions, on standardized
    logits when ``standardize`` (Sun et al., 2024)."""

    def __init__(self, T: float, standardize: bool = False) -> None:
        super().__init__()
        self.T = T
        self.standardize = standardize

    def forward(self, y_s: Tensor, y_t: Tensor) -> Tensor:
        if self.standardize:
            y_s, y_t = logit_standardize(y_s), logit_standardize(y_t)
        return distill_kl(y_s, y_t, self.T)


class KDTerm(DistillKL):
    """The logit-pair row ``kd`` (on when ``--w_kd`` is non-zero, with every method): KD at ``--kd_T`` on each (student,
    teacher) logit pair the method exposes (single images, CKD's combined group summaries, mixup's sources); with
    ``--logit_stand`` on standardized logits (its row sets ``logit_stand_ok``)."""

    ARGS = ("kd_T", "logit_stand")

    def __init__(self, ctx: Any, *, kd_T: float, logit_stand: bool = False) -> None:
        super().__init__(float(kd_T), standardize=bool(logit_stand))
