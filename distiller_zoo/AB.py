"""Activation Boundaries (Heo et al., AAAI 2019, "Knowledge Transfer via Distillation of Activation
Boundaries Formed by Hidden Neurons", Eq. 6, the alternative hinge-squared loss).

For a (connector-mapped) student pre-activation s and a teacher pre-activation t, each neuron is
pushed past the margin m on the teacher's side of the activation boundary:

    l(s, t) = sum over all elements of  (s + m)^2 * [s > -m and t <= 0]  +  (s - m)^2 * [s <= m and t > 0].

``ABLoss(feat_num)`` weights layer i (0-based, deepest last) by 2^(i - feat_num + 1), divides by the
batch size and scales by 3 / 1000, as in RepDistiller, and returns one loss per layer pair. It is
used only in the initialisation stage (student feature modules + connector), on *pre-activation*
features (``preact=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from distiller_zoo.AT import check_paired
from distiller_zoo.terms import FeatureTerm, TermContext, frozen, sum_of
from models.util import Connector

# RepDistiller's fixed rescaling of the summed boundary loss
AB_SCALE = 3.0 / 1000.0


def activation_boundary_loss(source: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """Summed squared-hinge loss pushing source past +/-margin on the side where target is active/inactive."""
    if source.shape != target.shape:
        raise ValueError(
            f"ABLoss needs the connector output to match the teacher map, got {tuple(source.shape)} and {tuple(target.shape)}"
        )
    target = target.detach()
    push_negative = ((source > -margin) & (target <= 0)).to(source.dtype)
    push_positive = ((source <= margin) & (target > 0)).to(source.dtype)
    return ((source + margin).pow(2) * push_negative + (source - margin).pow(2) * push_positive).sum()


class ABLoss(nn.Module):
    """AB loss of Heo et al. (2019): per-layer boundary losses, weighted 2^(i - feat_num + 1) / batch * 3/1000."""

    def __init__(self, feat_num: int, margin: float = 1.0) -> None:
        super().__init__()
        if feat_num < 1:
            raise ValueError(f"ABLoss needs feat_num >= 1 feature maps, got {feat_num}")
        self.w = [2.0 ** (i - feat_num + 1) for i in range(feat_num)]
        self.margin = margin

    def forward(self, g_s: Sequence[Tensor], g_t: Sequence[Tensor]) -> list[Tensor]:
        check_paired(g_s, g_t, "ABLoss")
        if len(g_s) != len(self.w):
            raise ValueError(f"ABLoss was built for {len(self.w)} feature maps but got {len(g_s)}; pass feat_num={len(g_s)}")
        bsz = g_s[0].shape[0]
        return [
            w * activation_boundary_loss(s, t, self.margin) / bsz * AB_SCALE
            for w, s, t in zip(self.w, g_s, g_t)
        ]


class ABTerm(FeatureTerm):
    """``--distill abound``: AB on the pre-activation stage outputs, feats[1:-1] (``preact``; the teacher's are cached
    pre-activation), through per-layer connectors.

    Init stage (as RepDistiller): the connectors and the student's feature modules are trained on the AB loss. The
    connectors are then frozen (eval mode, not in the main optimiser); the main stage keeps the AB loss through them
    with its table weight.
    """

    preact = True

    @classmethod
    def layers(cls, n_feats: int, **args: Any) -> list[int]:
        return list(range(1, n_feats - 1))

    def __init__(self, ctx: TermContext, signed: bool = False) -> None:
        super().__init__(ctx, signed)
        self.connector = frozen(Connector(self.s_shapes, self.t_shapes))
        self.criterion = ABLoss(len(self.s_shapes))

    def train(self, mode: bool = True) -> ABTerm:
        super().train(mode)
        self.connector.eval()  # trained in the init stage only (which sets its mode itself)
        return self

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        return sum_of(self.criterion(self.connector(feats_s), feats_t))

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [self.connector, *student.get_feat_modules()]

    def init_loss(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        return self.forward(feats_s, feats_t)
