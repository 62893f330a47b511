"""Transformed teacher matching, TTM and WTTM (Zheng & Yang, ICLR 2024, "Knowledge Distillation Based on Transformed
Teacher Matching", Eq. 11 and 13).

TTM drops the temperature on the student side and keeps it only on the teacher's, written as a power transform of its
probabilities: with p_t = softmax(z_t), p_s = softmax(z_s) and an exponent l (the paper's gamma, l = 1/T),

    p_t^(l) = p_t^l / sum_c p_t,c^l,         L_TTM  = (1/B) sum_i KL(p_t^(l)[i] || p_s[i]),
    w_i     = sum_c p_t,ic^l  (the power sum),  L_WTTM = (1/B) sum_i w_i * KL(p_t^(l)[i] || p_s[i]).

WTTM's sample weight is larger for smoother (less confident) teacher outputs. No T^2 factor: the student's softmax has
no temperature. The transformed teacher is computed in log space (l * log_softmax(z_t), then log-sum-exp), which equals
the direct power transform and stays finite for confident teachers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distiller_zoo.terms import TermContext

# the official README's exponents (vgg13 -> vgg8): TTM l = 0.1, WTTM l = 0.2
TTM_DEFAULT_L = 0.1
WTTM_DEFAULT_L = 0.2


def power_transform(logits_t: Tensor, l: float) -> tuple[Tensor, Tensor]:
    """(log p_t^(l), the power sum sum_c p_t,c^l) of softmax(logits_t) raised to ``l`` and renormalised: [B, C], [B]."""
    log_q = l * F.log_softmax(logits_t, dim=1)
    log_norm = torch.logsumexp(log_q, dim=1, keepdim=True)
    return log_q - log_norm, log_norm.squeeze(1).exp()


def ttm_per_sample(logits_s: Tensor, logits_t: Tensor, l: float) -> tuple[Tensor, Tensor]:
    """(KL(p_t^(l) || softmax(logits_s)) per sample, the power sum per sample); teacher detached."""
    log_pt, power_sum = power_transform(logits_t.detach(), l)
    kl = (log_pt.exp() * (log_pt - F.log_softmax(logits_s, dim=1))).sum(dim=1)
    return kl, power_sum


def ttm_loss(logits_s: Tensor, logits_t: Tensor, l: float) -> Tensor:
    """TTM: the batch mean of KL(p_t^(l) || p_s)."""
    return ttm_per_sample(logits_s, logits_t, l)[0].mean()


def wttm_loss(logits_s: Tensor, logits_t: Tensor, l: float) -> Tensor:
    """WTTM: the batch mean of (sum_c p_t,c^l) * KL(p_t^(l) || p_s)."""
    kl, power_sum = ttm_per_sample(logits_s, logits_t, l)
    return (power_sum * kl).mean()


class TTM(nn.Module):
    """TTM loss, called as ``(y_s, y_t)`` on student and teacher logits."""

    def __init__(self, l: float = TTM_DEFAULT_L) -> None:
        super().__init__()
        if not l > 0:
            raise ValueError(f"the TTM exponent l must be positive, got {l}")
        self.l = float(l)

    def forward(self, y_s: Tensor, y_t: Tensor) -> Tensor:
        return ttm_loss(y_s, y_t, self.l)


class WTTM(TTM):
    """WTTM loss (TTM weighted per sample by the teacher's power sum), called as ``(y_s, y_t)``."""

    def __init__(self, l: float = WTTM_DEFAULT_L) -> None:
        super().__init__(l)

    def forward(self, y_s: Tensor, y_t: Tensor) -> Tensor:
        return wttm_loss(y_s, y_t, self.l)


def _exponent(ttm_l: float | None, default: float) -> float:
    """``--ttm_l`` when given, else the method's published exponent."""
    return default if ttm_l is None else float(ttm_l)


class TTMTerm(TTM):
    """``--relational ttm``: TTM with l = ``--ttm_l`` (default 0.1) on the batch's logits."""

    ARGS = ("ttm_l",)

    def __init__(self, ctx: TermContext, *, ttm_l: float | None = None) -> None:
        super().__init__(_exponent(ttm_l, TTM_DEFAULT_L))

    def forward(self, logits_s: Tensor, logits_t: Tensor, labels: Tensor | None, batch: dict[str, Any]) -> Tensor:
        return super().forward(logits_s, logits_t)


class WTTMTerm(WTTM):
    """``--relational wttm``: WTTM with l = ``--ttm_l`` (default 0.2) on the batch's logits."""

    ARGS = ("ttm_l",)

    def __init__(self, ctx: TermContext, *, ttm_l: float | None = None) -> None:
        super().__init__(_exponent(ttm_l, WTTM_DEFAULT_L))

    def forward(self, logits_s: Tensor, logits_t: Tensor, labels: Tensor | None, batch: dict[str, Any]) -> Tensor:
        return super().forward(logits_s, logits_t)
