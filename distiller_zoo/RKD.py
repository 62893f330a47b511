"""Relational Knowledge Distillation (Park et al., CVPR 2019, "Relational Knowledge Distillation").

Distance-wise term (Eq. 3-4): psi_D(t_i, t_j) = ||t_i - t_j||_2 / mu, with mu the mean distance
over all distinct pairs of the batch; angle-wise term (Eq. 5-6): psi_A(t_i, t_j, t_k) =
<e_ij, e_kj>, e_ij = (t_i - t_j) / ||t_i - t_j||_2. Both are matched with the Huber (smooth-L1,
beta = 1) loss using the "mean" reduction of the authors' code; L = w_d * L_D + w_a * L_A with the
paper's weights w_d = 25, w_a = 50. The teacher side is computed without gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distiller_zoo.terms import TermContext


def pairwise_distances(e: Tensor, squared: bool = False, eps: float = 1e-12) -> Tensor:
    """[B, B] Euclidean distances between the rows of e, clamped at eps, with an exact zero diagonal."""
    sq_norm = e.pow(2).sum(dim=1)
    dist = (sq_norm.unsqueeze(1) + sq_norm.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=eps)
    if not squared:
        dist = dist.sqrt()
    off_diagonal = 1.0 - torch.eye(e.shape[0], dtype=dist.dtype, device=dist.device)
    return dist * off_diagonal


def mean_normalised_distances(e: Tensor) -> Tensor:
    """Pairwise distances divided by the mean of the positive entries (no host sync)."""
    d = pairwise_distances(e)
    positive = (d > 0).to(d.dtype)
    mean_positive = (d * positive).sum() / positive.sum()
    return d / mean_positive


def triplet_angle_cosines(e: Tensor) -> Tensor:
    """[B, B, B] cosines <e_ji, e_ki> of the angle at sample i for every (j, i, k), flattened."""
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # diff[i, j] = e[j] - e[i]
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).flatten()


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Smooth-L1 between mean-normalised pairwise distances of student and (no-grad) teacher."""
    with torch.no_grad():
        t_d = mean_normalised_distances(teacher)
    return F.smooth_l1_loss(mean_normalised_distances(student), t_d)


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Smooth-L1 between triplet angle cosines of student and (no-grad) teacher."""
    with torch.no_grad():
        t_angle = triplet_angle_cosines(teacher)
    return F.smooth_l1_loss(triplet_angle_cosines(student), t_angle)


class RKDLoss(nn.Module):
    """RKD-DA loss of Park et al. (2019): w_d * distance term + w_a * angle term."""

    def __init__(self, w_d: float = 25, w_a: float = 50) -> None:
        super().__init__()
        self.w_d = w_d
        self.w_a = w_a

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        if f_s.shape[0] < 2:
            raise ValueError(f"RKDLoss needs a batch of at least 2 samples, got {f_s.shape[0]}")
        student = f_s.flatten(1)
        teacher = f_t.detach().flatten(1)
        loss = student.new_zeros(())
        if self.w_d:
            loss = loss + self.w_d * rkd_distance_loss(student, teacher)
        if self.w_a:
            loss = loss + self.w_a * rkd_angle_loss(student, teacher)
        return loss


class RKDTerm(RKDLoss):
    """``--relational rkd``: RKD (distance 25, angle 50) on the batch's logits."""

    def __init__(self, ctx: TermContext) -> None:
        super().__init__()

    def forward(self, logits_s: Tensor, logits_t: Tensor, labels: Tensor | None, batch: dict[str, Any]) -> Tensor:
        return super().forward(logits_s, logits_t)
