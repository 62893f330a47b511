"""Neuron Selectivity Transfer (Huang & Wang, 2017, "Like What You Like: Knowledge Distill via Neuron
Selectivity Transfer", Eq. 4 and 8, polynomial kernel with d = 2, c = 0).

Each channel of a feature map is flattened over space and L2-normalised: f^i (N, C, H*W) rows of
unit norm. With the kernel k(x, y) = (x^T y)^2 the squared MMD between the student's and the
teacher's channel sets is

    L_NST = mean_{i,i'} k(f_t^i, f_t^i') + mean_{j,j'} k(f_s^j, f_s^j') - 2 mean_{i,j} k(f_s^j, f_t^i),

where every mean also runs over the batch. Spatial sizes are matched by adaptive average pooling
of the larger map. ``NSTLoss`` returns one loss per layer pair (RepDistiller: feats[1:-1], beta = 50).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from distiller_zoo.AT import check_paired
from distiller_zoo.terms import FeatureTerm, TermContext, sum_of
from distiller_zoo.VID import match_spatial_size


def poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    """(a_i . b_j)^2 for every pair of rows: (N, Ca, D), (N, Cb, D) -> (N, Cb, Ca)."""
    return (b @ a.transpose(1, 2)).pow(2)


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Squared MMD with the degree-2 polynomial kernel between normalised student and teacher channels."""
    f_s, f_t = match_spatial_size(f_s, f_t.detach())
    f_s = F.normalize(f_s.flatten(2), dim=2)
    f_t = F.normalize(f_t.flatten(2), dim=2)
    return poly_kernel(f_t, f_t).mean() + poly_kernel(f_s, f_s).mean() - 2 * poly_kernel(f_s, f_t).mean()


class NSTLoss(nn.Module):
    """NST loss of Huang & Wang (2017): one polynomial-kernel MMD per student/teacher layer pair."""

    def forward(self, g_s: Sequence[Tensor], g_t: Sequence[Tensor]) -> list[Tensor]:
        check_paired(g_s, g_t, "NSTLoss")
        return [nst_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]


class NSTTerm(FeatureTerm):
    """``--distill nst``: NST on every stage output, feats[1:-1] of student and teacher, summed."""

    @classmethod
    def layers(cls, n_feats: int, **args: Any) -> list[int]:
        return list(range(1, n_feats - 1))

    def __init__(self, ctx: TermContext, signed: bool = False) -> None:
        super().__init__(ctx, signed)
        self.criterion = NSTLoss()

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        return sum_of(self.criterion(feats_s, feats_t))
