"""Flow of Solution Procedure (Yim et al., CVPR 2017, "A Gift from Knowledge Distillation: Fast
Optimization, Network Minimization and Transfer Learning", Eq. 1-2).

For two consecutive feature maps F1 (N, C1, H, W) and F2 (N, C2, H, W) the FSP matrix is

    G[n, j, i] = 1 / (H W) * sum_{h,w} F2[n, j, h, w] * F1[n, i, h, w]        (shape (N, C2, C1)),

with the larger map adaptive-average-pooled to the smaller one's spatial size first (RepDistiller).
The loss of one consecutive pair is the mean squared difference of the student and teacher
matrices; ``FSP`` returns one loss per pair (len(g) - 1 losses). Student and teacher must have the
same channel counts layer by layer. RepDistiller uses FSP only in the initialisation stage, on
feats[:-1] (every map but the pooled vector).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from distiller_zoo.AT import check_paired
from distiller_zoo.kdsvd import check_equal_channels
from distiller_zoo.terms import FeatureTerm, TermContext, sum_of
from distiller_zoo.VID import match_spatial_size


def fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    """Spatial mean of the channel outer products of two feature maps: -> (N, C_top, C_bottom)."""
    bottom, top = match_spatial_size(bottom, top)
    return top.flatten(2) @ bottom.flatten(2).transpose(1, 2) / bottom[0, 0].numel()


def fsp_matrices(g: Sequence[Tensor]) -> list[Tensor]:
    """FSP matrices of every consecutive pair of feature maps in g."""
    return [fsp_matrix(g[i], g[i + 1]) for i in range(len(g) - 1)]


class FSP(nn.Module):
    """FSP loss of Yim et al. (2017): MSE between student and teacher FSP matrices of consecutive layers."""

    def __init__(self, s_shapes: Sequence[Sequence[int]], t_shapes: Sequence[Sequence[int]]) -> None:
        super().__init__()
        if len(s_shapes) != len(t_shapes):
            raise ValueError(f"FSP needs as many student as teacher feature shapes, got {len(s_shapes)} and {len(t_shapes)}")
        s_c = [int(s[1]) for s in s_shapes]
        t_c = [int(t[1]) for t in t_shapes]
        if s_c != t_c:
            raise ValueError(f"FSP needs equal student and teacher channel counts per layer, got {s_c} and {t_c}; pick a matching pair")

    def forward(self, g_s: Sequence[Tensor], g_t: Sequence[Tensor]) -> list[Tensor]:
        check_paired(g_s, g_t, "FSP")
        s_fsp = fsp_matrices(g_s)
        t_fsp = fsp_matrices([f.detach() for f in g_t])
        return [(s - t).pow(2).mean() for s, t in zip(s_fsp, t_fsp)]


class FSPTerm(FeatureTerm):
    """``--distill fsp``: FSP matrices of consecutive maps feats[:-1] (every map but the pooled vector).

    Init stage (as RepDistiller): the student's feature modules are trained on the FSP loss alone; the main stage
    keeps the same loss with its table weight.
    """

    ARGS = ("model_s", "model_t")  # named in the message of check

    @classmethod
    def layers(cls, n_feats: int, **args: Any) -> list[int]:
        return list(range(n_feats - 1))

    @classmethod
    def check(cls, s_shapes: Sequence[Sequence[int]], t_shapes: Sequence[Sequence[int]], *, model_s: str,
              model_t: str) -> None:
        s_idx, t_idx = cls.paired_layers(len(s_shapes), len(t_shapes), model_s=model_s, model_t=model_t)
        check_equal_channels("fsp", model_s, model_t, [s_shapes[i] for i in s_idx], [t_shapes[j] for j in t_idx])

    def __init__(self, ctx: TermContext, signed: bool = False, **args: Any) -> None:
        super().__init__(ctx, signed, **args)
        self.criterion = FSP(self.s_shapes, self.t_shapes)

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        return sum_of(self.criterion(feats_s, feats_t))

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return list(student.get_feat_modules())

    def init_loss(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        return self.forward(feats_s, feats_t)
