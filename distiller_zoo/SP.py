"""Similarity-Preserving KD (Tung & Mori, ICCV 2019, "Similarity-Preserving Knowledge Distillation", Eq. 2-4).

For a batch of b activations flattened to Q (b, d), the pairwise similarity matrix G = Q Q^T is
L2-normalised row by row (G~_[i,:] = G_[i,:] / ||G_[i,:]||_2), and the loss of one layer pair is

    L_SP = 1 / b^2 * || G~_t - G~_s ||_F^2.

``Similarity`` returns one loss per layer pair (RepDistiller uses only feats[-2], weight beta = 3000).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from distiller_zoo.AT import check_paired
from distiller_zoo.terms import FeatureTerm, TermContext, sum_of


def similarity_matrix(f: Tensor) -> Tensor:
    """Row-L2-normalised batch Gram matrix of the flattened activations: (b, ...) -> (b, b)."""
    q = f.flatten(1)
    return F.normalize(q @ q.t(), dim=1)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Squared Frobenius distance of the two normalised similarity matrices, divided by b^2."""
    bsz = f_s.shape[0]
    diff = similarity_matrix(f_t.detach()) - similarity_matrix(f_s)
    return diff.pow(2).sum() / (bsz * bsz)


class Similarity(nn.Module):
    """SP loss of Tung & Mori (2019): one similarity-matrix distance per student/teacher layer pair."""

    def forward(self, g_s: Sequence[Tensor], g_t: Sequence[Tensor]) -> list[Tensor]:
        check_paired(g_s, g_t, "Similarity")
        return [sp_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]


class SimilarityTerm(FeatureTerm):
    """``--distill similarity``: SP on the last feature map before pooling, feats[-2], within the batch."""

    @classmethod
    def layers(cls, n_feats: int, **args: Any) -> list[int]:
        return [n_feats - 2]

    def __init__(self, ctx: TermContext, signed: bool = False) -> None:
        super().__init__(ctx, signed)
        self.criterion = Similarity()

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        return sum_of(self.criterion(feats_s, feats_t))
