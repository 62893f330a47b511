"""Attention Transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention", Eq. 2).

The spatial attention map of a feature map f (N, C, H, W) is the channel mean of |f|^p (p = 2),
flattened to (N, H*W) and L2-normalised per sample:

    Q(f) = vec( mean_c f_c^p ) / || vec( mean_c f_c^p ) ||_2

and the loss of one student/teacher layer pair is mean over (n, h*w) of (Q(f_s) - Q(f_t))^2.
When the two maps differ in spatial size, the larger one is adaptive-average-pooled to the
smaller one first (as in RepDistiller). ``Attention`` returns one loss per layer pair; the caller
sums them (RepDistiller weight beta = 1000, on feats[1:-1]).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from distiller_zoo.terms import FeatureTerm, TermContext, sum_of
from distiller_zoo.VID import match_spatial_size


def check_paired(g_s: Sequence[Tensor], g_t: Sequence[Tensor], name: str) -> None:
    """Raise if the student and teacher feature lists differ in length."""
    if len(g_s) != len(g_t):
        raise ValueError(f"{name} needs as many student as teacher feature maps, got {len(g_s)} and {len(g_t)}")


def attention_map(f: Tensor, p: int = 2) -> Tensor:
    """Row-L2-normalised, flattened channel mean of f^p: (N, C, H, W) -> (N, H*W)."""
    return F.normalize(f.pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(f_s: Tensor, f_t: Tensor, p: int = 2) -> Tensor:
    """Mean squared difference of the student and (detached) teacher attention maps of one layer pair."""
    f_s, f_t = match_spatial_size(f_s, f_t.detach())
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


class Attention(nn.Module):
    """AT loss of Zagoruyko & Komodakis (2017): one attention-map MSE per student/teacher layer pair."""

    def __init__(self, p: int = 2) -> None:
        super().__init__()
        self.p = p

    def forward(self, g_s: Sequence[Tensor], g_t: Sequence[Tensor]) -> list[Tensor]:
        check_paired(g_s, g_t, "Attention")
        return [at_loss(f_s, f_t, self.p) for f_s, f_t in zip(g_s, g_t)]


class AttentionTerm(FeatureTerm):
    """``--distill attention``: AT on every stage output, feats[1:-1] of student and teacher, summed."""

    @classmethod
    def layers(cls, n_feats: int, **args: Any) -> list[int]:
        return list(range(1, n_feats - 1))

    def __init__(self, ctx: TermContext, signed: bool = False) -> None:
        super().__init__(ctx, signed)
        self.criterion = Attention()

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        return sum_of(self.criterion(feats_s, feats_t))
