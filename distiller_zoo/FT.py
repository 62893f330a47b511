"""Factor Transfer (Kim, Park & Kwak, NeurIPS 2018, "Paraphrasing Complex Network: Network Compression
via Factor Transfer", Eq. 3), in the form of the RepDistiller benchmark.

A paraphraser (``models.util.Paraphraser``), trained first to reconstruct the teacher's last
feature map, encodes it into a teacher factor F_t; a translator (``models.util.Translator``) maps
the student's last feature map to a student factor F_s. Each factor is reduced to the
row-L2-normalised channel mean of F^p1 (p1 = 2), and the loss is the mean |difference|^p2 (p2 = 1):

    phi(F) = vec( mean_c F_c^p1 ) / || vec( mean_c F_c^p1 ) ||_2,
    L_FT   = mean over (n, h*w) of | phi(F_s) - phi(F_t) |^p2.

Spatial sizes are matched by adaptive average pooling of the larger factor.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distiller_zoo.AT import attention_map
from distiller_zoo.terms import FeatureTerm, TermContext, frozen
from distiller_zoo.VID import match_spatial_size
from models.util import Paraphraser, Translator

# students whose paraphraser is trained at learning rate 0.01 in the init stage (RepDistiller)
SMALL_INIT_LR_STUDENTS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
                          "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")
SMALL_INIT_LR = 0.01


def factor_transfer_loss(factor_s: Tensor, factor_t: Tensor, p1: int = 2, p2: int = 1) -> Tensor:
    """Mean |phi(F_s) - phi(F_t)|^p2 with phi the normalised channel mean of F^p1 (teacher factor detached)."""
    factor_s, factor_t = match_spatial_size(factor_s, factor_t.detach())
    diff = attention_map(factor_s, p1) - attention_map(factor_t, p1)
    if p2 == 1:
        return diff.abs().mean()
    return diff.pow(p2).mean()


class FactorTransfer(nn.Module):
    """FT loss of Kim et al. (2018) between the translated student factor and the paraphrased teacher factor."""

    def __init__(self, p1: int = 2, p2: int = 1) -> None:
        super().__init__()
        self.p1 = p1
        self.p2 = p2

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        """Loss between the translated student factor f_s and the paraphrased teacher factor f_t."""
        return factor_transfer_loss(f_s, f_t, self.p1, self.p2)


class FactorTerm(FeatureTerm):
    """``--distill factor``: FT between the translated student map and the paraphrased teacher map, feats[-2].

    Init stage (as RepDistiller): the paraphraser alone learns to reconstruct the teacher map (MSE); it is then
    frozen and the main stage trains the translator (and the student) on the FT loss.
    """

    ARGS = ("model_s", "learning_rate")

    @classmethod
    def layers(cls, n_feats: int, **args: Any) -> list[int]:
        return [n_feats - 2]

    def __init__(self, ctx: TermContext, signed: bool = False, **args: Any) -> None:
        super().__init__(ctx, signed, **args)
        self.paraphraser = frozen(Paraphraser(self.t_shapes[0]))
        self.translator = Translator(self.s_shapes[0], self.t_shapes[0])
        self.criterion = FactorTransfer()

    def train(self, mode: bool = True) -> FactorTerm:
        super().train(mode)
        self.paraphraser.eval()  # trained in the init stage only (which sets its mode itself)
        return self

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        with torch.no_grad():
            factor_t = self.paraphraser(feats_t[0], is_factor=True)
        return self.criterion(self.translator(feats_s[0]), factor_t)

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [self.paraphraser]

    def init_loss(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        _, reconstruction = self.paraphraser(feats_t[0])
        return F.mse_loss(reconstruction, feats_t[0])

    def init_learning_rate(self, *, model_s: str, learning_rate: float, **args: Any) -> float:
        return SMALL_INIT_LR if model_s in SMALL_INIT_LR_STUDENTS else float(learning_rate)
