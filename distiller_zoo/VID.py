"""Variational Information Distillation (Ahn et al., CVPR 2019, "Variational Information Distillation
for Knowledge Transfer", Eq. 2 and 4).

The teacher feature t is modelled by a Gaussian q(t | s) whose mean mu(s) is a small regressor on
the student feature (three 1x1 convolutions) and whose variance is one learned scalar per channel,
sigma_c^2 = softplus(alpha_c) + eps. The loss is the negative log-likelihood without constants,

    L_VID = mean over (n, c, h, w) of 0.5 * ( (t - mu(s))^2 / sigma_c^2 + log sigma_c^2 ),

with alpha initialised so that sigma_c^2 == init_pred_var (5.0 in the RepDistiller benchmark).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distiller_zoo.terms import FeatureTerm, TermContext


def inverse_softplus(y: float) -> float:
    """x such that softplus(x) == y (for y > 0)."""
    return math.log(math.expm1(y))


def match_spatial_size(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool whichever of the two feature maps is spatially larger to the other's size."""
    s_h, t_h = input.shape[2], target.shape[2]
    if s_h > t_h:
        input = F.adaptive_avg_pool2d(input, target.shape[2:])
    elif s_h < t_h:
        target = F.adaptive_avg_pool2d(target, input.shape[2:])
    return input, target


def gaussian_nll(pred_mean: Tensor, pred_var: Tensor, target: Tensor) -> Tensor:
    """Mean of 0.5 * ((target - mean)^2 / var + log var) (Gaussian NLL without the constant)."""
    return (0.5 * ((pred_mean - target) ** 2 / pred_var + torch.log(pred_var))).mean()


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, bias=False)


class VIDLoss(nn.Module):
    """VID loss of Ahn et al. (2019): Gaussian NLL of the teacher feature given the student feature."""

    def __init__(
        self,
        num_input_channels: int,
        num_mid_channel: int,
        num_target_channels: int,
        init_pred_var: float = 5.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            _conv1x1(num_input_channels, num_mid_channel),
            nn.ReLU(),
            _conv1x1(num_mid_channel, num_mid_channel),
            nn.ReLU(),
            _conv1x1(num_mid_channel, num_target_channels),
        )
        self.log_scale = nn.Parameter(torch.full((num_target_channels,), inverse_softplus(init_pred_var - eps)))
        self.eps = eps

    def pred_var(self) -> Tensor:
        """Per-channel predicted variance softplus(log_scale) + eps, shaped (1, C, 1, 1)."""
        return (F.softplus(self.log_scale) + self.eps).view(1, -1, 1, 1)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        input, target = match_spatial_size(input, target.detach())
        return gaussian_nll(self.regressor(input), self.pred_var(), target)


class VIDTerm(FeatureTerm):
    """``--distill vid``: one VIDLoss per stage output, feats[1:-1] of student and teacher, summed."""

    @classmethod
    def layers(cls, n_feats: int, **args: Any) -> list[int]:
        return list(range(1, n_feats - 1))

    def __init__(self, ctx: TermContext, signed: bool = False) -> None:
        super().__init__(ctx, signed)
        self.vid = nn.ModuleList(VIDLoss(s[1], t[1], t[1]) for s, t in zip(self.s_shapes, self.t_shapes))

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        return sum(vid(f_s, f_t) for vid, f_s, f_t in zip(self.vid, feats_s, feats_t))
