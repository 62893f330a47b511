"""DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher", Eq. 5-9).

With p = softmax(z / tau) for student and teacher ([B, C] rows are predictions):
  inter-class relation  L_inter = 1 - (1/B) sum_i  rho(p_s[i, :], p_t[i, :])   (Eq. 6, over classes)
  intra-class relation  L_intra = 1 - (1/C) sum_c  rho(p_s[:, c], p_t[:, c])   (Eq. 8, over the batch)
  L_DIST = tau^2 * (beta * L_inter + gamma * L_intra)                           (Eq. 9)
where rho is the Pearson correlation coefficient (with eps = 1e-8 added to the denominator, as in
the authors' code). Defaults beta = gamma = 1; tau = 4 is the CIFAR-100 temperature (the authors'
ImageNet recipe uses tau = 1).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from distiller_zoo.terms import TermContext


def cosine_similarity(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise cosine similarity <a_i, b_i> / (|a_i| |b_i| + eps), shape [N]."""
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def pearson_correlation(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise Pearson correlation of a[i, :] and b[i, :] (cosine of the row-centred vectors), shape [N]."""
    return cosine_similarity(a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True), eps)


def inter_class_relation(p_s: Tensor, p_t: Tensor, eps: float = 1e-8) -> Tensor:
    """1 - mean over samples of the Pearson correlation across classes (DIST Eq. 6)."""
    return 1.0 - pearson_correlation(p_s, p_t, eps).mean()


def intra_class_relation(p_s: Tensor, p_t: Tensor, eps: float = 1e-8) -> Tensor:
    """1 - mean over classes of the Pearson correlation across the batch (DIST Eq. 8)."""
    return inter_class_relation(p_s.transpose(0, 1), p_t.transpose(0, 1), eps)


class DIST(nn.Module):
    """DIST loss of Huang et al. (2022): tau^2 * (beta * inter-class + gamma * intra-class relation)."""

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, tau: float = 4.0) -> None:
        super().__init__()
        self.beta = beta
        self.gamma = gamma
        self.tau = tau

    def forward(self, z_s: Tensor, z_t: Tensor) -> Tensor:
        p_s = (z_s / self.tau).softmax(dim=1)
        p_t = (z_t.detach() / self.tau).softmax(dim=1)
        inter = inter_class_relation(p_s, p_t)
        intra = intra_class_relation(p_s, p_t)
        return self.tau**2 * (self.beta * inter + self.gamma * intra)


class DISTTerm(DIST):
    """``--relational dist``: DIST (beta = gamma = 1, tau = 4) on the batch's logits."""

    def __init__(self, ctx: TermContext) -> None:
        super().__init__()

    def forward(self, logits_s: Tensor, logits_t: Tensor, labels: Tensor | None, batch: dict[str, Any]) -> Tensor:
        return super().forward(logits_s, logits_t)
