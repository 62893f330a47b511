"""Correlation Congruence, in the form used by the RepDistiller benchmark (Tian et al., ICLR 2020, "CRD").

Peng et al. (ICCV 2019, "Correlation Congruence for Knowledge Distillation") define CC on
kernel correlation matrices of the embeddings. The RepDistiller benchmark, whose CIFAR-100 table
is the one papers compare against, implements a cheap variant on projected embeddings e_s, e_t [B, d]:

    delta = |e_s - e_t|,   L_CC = 1/(B-1) * sum_{i=0}^{B-2} sum_j delta[i, j] * delta[i+1, j]

i.e. the correlation between consecutive samples' embedding discrepancies. This module reproduces
that variant, so numbers are comparable with the RepDistiller table.

Both embeddings come from trainable linear heads (``LinearEmbed`` below: one for the student
feature, one for the teacher feature), so the teacher-side embedding is NOT detached here: its head
is trained through this loss. Detach the raw teacher feature before the teacher head instead.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from distiller_zoo.terms import FeatureTerm, TermContext
from models.util import LinearEmbed


def consecutive_discrepancy_correlation(e_s: Tensor, e_t: Tensor) -> Tensor:
    """Mean over i of <|e_s[i] - e_t[i]|, |e_s[i+1] - e_t[i+1]|> (the RepDistiller CC loss)."""
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


class Correlation(nn.Module):
    """RepDistiller's Correlation Congruence loss on embeddings [B, d] (see module docstring)."""

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        if f_s.shape[0] < 2:
            raise ValueError(f"Correlation needs a batch of at least 2 samples, got {f_s.shape[0]}")
        return consecutive_discrepancy_correlation(f_s, f_t)


class CorrelationTerm(FeatureTerm):
    """``--distill correlation``: CC on ``--feat_dim`` linear embeddings of the last (pooled) feature."""

    @classmethod
    def layers(cls, n_feats: int, **args: Any) -> list[int]:
        return [n_feats - 1]

    ARGS = ("feat_dim",)

    def __init__(self, ctx: TermContext, signed: bool = False, *, feat_dim: int) -> None:
        super().__init__(ctx, signed, feat_dim=feat_dim)
        self.embed_s = LinearEmbed(self.s_shapes[0][1], feat_dim)
        self.embed_t = LinearEmbed(self.t_shapes[0][1], feat_dim)
        self.criterion = Correlation()

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        return self.criterion(self.embed_s(feats_s[0]), self.embed_t(feats_t[0]))
