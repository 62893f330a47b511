"""Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018, "Learning Deep Representations with
Probabilistic Knowledge Transfer", Eq. 7-10, cosine-similarity kernel).

Each representation row x_i is L2-normalised (x_i / (||x_i|| + eps)); the cosine kernel scaled to
[0, 1], K_ij = (cos(x_i, x_j) + 1) / 2, is turned into conditional probabilities by normalising
each row, p_{j|i} = K_ij / sum_k K_ik (the diagonal is kept, as in the authors' code). The loss is
the KL divergence of the student from the teacher conditionals, averaged over all b^2 entries
(RepDistiller's reduction, which goes with its weight beta = 30000):

    L_PKT = 1 / b^2 * sum_{i,j} p^t_{j|i} * log( (p^t_{j|i} + eps) / (p^s_{j|i} + eps) ).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from distiller_zoo.terms import FeatureTerm, TermContext


def cosine_conditional_probabilities(f: Tensor, eps: float = 1e-7) -> Tensor:
    """Row-normalised (cos + 1) / 2 kernel of the flattened rows of f: (b, ...) -> (b, b)."""
    x = f.flatten(1)
    x = torch.nan_to_num(x / (x.norm(dim=1, keepdim=True) + eps), nan=0.0)
    kernel = (x @ x.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
    """Mean over the b x b entries of p_t * log((p_t + eps) / (p_s + eps)) (teacher detached)."""
    p_s = cosine_conditional_probabilities(f_s, eps)
    p_t = cosine_conditional_probabilities(f_t.detach(), eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


class PKT(nn.Module):
    """PKT loss of Passalis & Tefas (2018) on (b, d) representations (RepDistiller: feats[-1])."""

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        return pkt_loss(f_s, f_t)


class PKTTerm(FeatureTerm):
    """``--distill pkt``: PKT on the pooled representation, feats[-1], within the batch."""

    @classmethod
    def layers(cls, n_feats: int, **args: Any) -> list[int]:
        return [n_feats - 1]

    def __init__(self, ctx: TermContext, signed: bool = False) -> None:
        super().__init__(ctx, signed)
        self.criterion = PKT()

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        return self.criterion(feats_s[0], feats_t[0])
