"""FitNets hint loss (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep Nets", Eq. 3).

L_HT = mean || r(f_s) - f_t ||^2: the caller passes the already-regressed student feature r(f_s)
(the regressor is part of the trainable modules, e.g. a ConvReg), so this is a plain MSE with the
"mean" reduction, as in RepDistiller.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from distiller_zoo.terms import FeatureTerm, TermContext
from models.util import ConvReg


def hint_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Mean squared error between the regressed student hint and the (detached) teacher feature."""
    return F.mse_loss(f_s, f_t.detach())


class HintLoss(nn.Module):
    """FitNets stage-1 hint loss: MSE (mean) between regressed student and teacher features."""

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        return hint_loss(f_s, f_t)


class HintTerm(FeatureTerm):
    """``--distill hint``: FitNet between a ConvReg-regressed student map and the teacher map at ``--hint_layer``.

    ``signed`` (CKD group-mean differences) drops the regressor's final ReLU.
    """

    ARGS = ("hint_layer", "model_s", "model_t")

    @classmethod
    def layers(cls, n_feats: int, *, hint_layer: int, **args: Any) -> list[int]:
        return [int(hint_layer)]

    @classmethod
    def check(cls, s_shapes: list, t_shapes: list, *, hint_layer: int, model_s: str, model_t: str) -> None:
        limit = min(len(s_shapes), len(t_shapes))
        if not 0 <= hint_layer < limit:
            raise ValueError(f"--hint_layer {hint_layer} is outside the feature list of {model_s}/{model_t} "
                             f"(valid: 0 to {limit - 1})")

    def __init__(self, ctx: TermContext, signed: bool = False, **args: Any) -> None:
        super().__init__(ctx, signed, **args)
        self.regress = ConvReg(self.s_shapes[0], self.t_shapes[0], use_relu=not signed)
        self.criterion = HintLoss()

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        return self.criterion(self.regress(feats_s[0]), feats_t[0])
