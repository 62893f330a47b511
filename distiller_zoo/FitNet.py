"""FitNets hint loss (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep Nets", Eq. 3).

L_HT = mean || r(f_s) - f_t ||^2: the caller passes the already-regressed student feature r(f_s)
(the regressor is part of the trainable modules, e.g. a ConvReg), so this is a plain MSE with the
"mean" reduction, as in RepDistiller.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def hint_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Mean squared error between the regressed student hint and the (detached) teacher feature."""
    return F.mse_loss(f_s, f_t.detach())


class HintLoss(nn.Module):
    """FitNets stage-1 hint loss: MSE (mean) between regressed student and teacher features."""

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        return hint_loss(f_s, f_t)
