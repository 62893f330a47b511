"""Contrastive Representation Distillation loss (Tian, Krishnan & Isola, ICLR 2020, "CRD", Eq. 18).

Student and teacher features are projected by linear heads to a shared space and L2-normalised
(``Embed``). With h = exp(<v, m>/T)/Z from ``ContrastMemory``, the NCE objective treats the
positive (column 0) as drawn from the data and the K negatives as drawn from the uniform noise
distribution P_n = 1/N:

    P(D=1 | x) = x / (x + K * P_n),
    L = -( sum_b log P(D=1 | x_b,0) + sum_b sum_{k>=1} log(1 - P(D=1 | x_b,k)) ) / B.

The loss is symmetric: student anchors against the teacher bank plus teacher anchors against the
student bank.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Protocol

from torch import Tensor, nn

from crd.memory import ContrastMemory
from models.util import Embed

NCE_EPS = 1e-7


class CRDOptions(Protocol):
    s_dim: int
    t_dim: int
    feat_dim: int
    nce_k: int
    nce_t: float
    nce_m: float
    n_data: int


def nce_loss(x: Tensor, n_data: int, eps: float = NCE_EPS) -> Tensor:
    """NCE loss of CRD on scores x [B, K+1, ...] whose column 0 is the positive (uniform noise P_n = 1/n_data)."""
    batch = x.shape[0]
    x = x.reshape(batch, -1)
    k_pn = (x.shape[1] - 1) / float(n_data)
    log_d1 = (x[:, 0] / (x[:, 0] + k_pn + eps)).log()
    log_d0 = (k_pn / (x[:, 1:] + k_pn + eps)).log()
    return -(log_d1.sum() + log_d0.sum()) / batch


class ContrastLoss(nn.Module):
    """NCE criterion of CRD (Eq. 18) for one direction (anchor side) of the contrast."""

    def __init__(self, n_data: int) -> None:
        super().__init__()
        self.n_data = n_data

    def forward(self, x: Tensor) -> Tensor:
        return nce_loss(x, self.n_data)


class CRDLoss(nn.Module):
    """CRD loss of Tian et al. (2020): two trainable embedding heads, the memory banks and two NCE criteria.

    opt needs s_dim, t_dim, feat_dim, nce_k, nce_t, nce_m and n_data.
    """

    def __init__(self, opt: CRDOptions) -> None:
        super().__init__()
        self.embed_s = Embed(opt.s_dim, opt.feat_dim)
        self.embed_t = Embed(opt.t_dim, opt.feat_dim)
        self.contrast = ContrastMemory(opt.feat_dim, opt.n_data, opt.nce_k, opt.nce_t, opt.nce_m)
        self.criterion_s = ContrastLoss(opt.n_data)
        self.criterion_t = ContrastLoss(opt.n_data)

    def forward(self, f_s: Tensor, f_t: Tensor, idx: Tensor, contrast_idx: Tensor | None = None) -> Tensor:
        """f_s [B, s_dim], f_t [B, t_dim] (teacher, detached here), idx [B] dataset indices of the batch,
        contrast_idx [B, K+1] candidates from the CRD sampler (column 0 = idx)."""
        if contrast_idx is None:
            raise ValueError("CRDLoss needs contrast_idx [B, K+1] from the CRD sampler (dataset with is_sample=True)")
        e_s = self.embed_s(f_s)
        e_t = self.embed_t(f_t.detach())
        out_s, out_t = self.contrast(e_s, e_t, idx, contrast_idx)
        return self.criterion_s(out_s) + self.criterion_t(out_t)


class CRDTerm(CRDLoss):
    """``--relational crd``: CRD on the logits (embedding heads of ``--feat_dim``, ``--nce_k`` negatives drawn by the
    CRD sampler into ``batch['contrast_idx']``, one memory slot per cached training item)."""

    ARGS = ("feat_dim", "nce_k", "nce_t", "nce_m")

    def __init__(self, ctx: Any, *, feat_dim: int, nce_k: int, nce_t: float, nce_m: float) -> None:
        super().__init__(SimpleNamespace(s_dim=ctx.num_classes, t_dim=ctx.num_classes, feat_dim=feat_dim,
                                         nce_k=nce_k, nce_t=nce_t, nce_m=nce_m, n_data=int(ctx.n_items)))

    def forward(self, logits_s: Tensor, logits_t: Tensor, labels: Tensor | None, batch: dict[str, Any]) -> Tensor:
        return super().forward(logits_s, logits_t, batch["idx"], batch["contrast_idx"])
