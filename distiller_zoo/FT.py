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

from torch import Tensor, nn

from distiller_zoo.AT import attention_map
from distiller_zoo.VID import match_spatial_size


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
