"""Comparative Knowledge Distillation (Wilf, Xu, Liang, Obolenskiy, Fried & Morency, 2023, arXiv).

CKD teaches the student the teacher's interpretation of the *difference* between two groups of
samples, so every cached teacher call is reused in many comparisons. For a positive group P and
a negative group N of g images each (group means of logits, labels as class histograms):

    Delta_s = combine(mean_{x in P} s(x), mean_{x in N} s(x))
    Delta_t = combine(mean_{x in P} t(x), mean_{x in N} t(x))      (cached teacher logits)
    Delta_y = combine(hist(P), hist(N))

    L_cls = w_cls * MSE(Delta_s, Delta_y)
    L_rel = w_rel * MSE(Delta_s, Delta_t)
    L_kd  = w_kd  * KD_T(Delta_s, Delta_t)     (Hinton KD on the combined logits, optional)

with combine = the difference ('ckd', the comparative loss), the equal-weight average ('ckd_add')
or a lam-weighted average ('ckd_mixup', lam drawn by the caller) of the two group summaries.
MSE is the mean over all elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distiller_zoo.KD import distill_kl

CKD_MODES = ("ckd", "ckd_add", "ckd_mixup")


def combine(a: Tensor, b: Tensor, mode: str, lam: Tensor | float | None = None) -> Tensor:
    """Combine two group summaries: 'ckd' -> a - b; 'ckd_add' -> (a + b) / 2; 'ckd_mixup' -> lam*a + (1-lam)*b."""
    if mode == "ckd":
        return a - b
    if mode == "ckd_add":
        return 0.5 * a + 0.5 * b
    if mode == "ckd_mixup":
        if lam is None:
            raise ValueError("combine(mode='ckd_mixup') needs lam (a scalar drawn by the caller)")
        if isinstance(lam, Tensor):
            lam = lam.to(device=a.device, dtype=a.dtype)
        return lam * a + (1 - lam) * b
    raise ValueError(f"unknown CKD mode {mode!r}; expected one of {CKD_MODES}")


def ckd_group_sizes(pos_and_neg: int) -> tuple[int, int]:
    """(P, N) of a CKD tuple of ``pos_and_neg`` images: N = pos_and_neg // 2 negatives, P = pos_and_neg - N positives.

    The one home of the group sizes: the tuple sampler draws P + N distinct images, the loss splits them here.
    """
    if pos_and_neg < 2:
        raise ValueError(f"a CKD tuple needs at least 2 images (one positive, one negative), got {pos_and_neg}")
    n = pos_and_neg // 2
    return pos_and_neg - n, n


def group_mean(x: Tensor, groups: Tensor) -> Tensor:
    """Mean of the rows of x [M, ...] selected by each row of groups [B, g] (indices into x): returns [B, ...].

    Cached teacher logits, and teacher feature maps (half-precision storage is averaged in float32)."""
    picked = x[groups]
    if picked.dtype in (torch.float16, torch.bfloat16):
        picked = picked.to(torch.float32)
    return picked.mean(dim=1)


def label_histogram(labels: Tensor, groups: Tensor, num_classes: int) -> Tensor:
    """Class histogram of each group: the label counts of groups [B, g] (indices into labels [M]) divided by g; rows
    sum to 1, shape [B, C], in the default float type."""
    picked = labels[groups]
    hist = torch.zeros((groups.shape[0], num_classes), dtype=torch.get_default_dtype(), device=groups.device)
    hist.scatter_add_(1, picked, torch.ones(picked.shape, dtype=hist.dtype, device=groups.device))
    return hist.div_(groups.shape[1])


class CKDLoss(nn.Module):
    """CKD loss of Wilf et al. (2023): MSE of combined student outputs to combined labels and teacher outputs.

    ``forward`` returns the already-weighted terms as a dict; a term whose weight is zero is neither
    computed nor present.
    """

    def __init__(self, mode: str = "ckd", w_cls: float = 1.0, w_rel: float = 1.0, w_kd: float = 0.0, T: float = 4.0) -> None:
        super().__init__()
        if mode not in CKD_MODES:
            raise ValueError(f"unknown CKD mode {mode!r}; expected one of {CKD_MODES}")
        self.mode = mode
        self.w_cls = w_cls
        self.w_rel = w_rel
        self.w_kd = w_kd
        self.T = T

    def forward(
        self,
        s_pos: Tensor,
        s_neg: Tensor,
        t_pos: Tensor,
        t_neg: Tensor,
        y_pos: Tensor,
        y_neg: Tensor,
        lam: Tensor | float | None = None,
    ) -> dict[str, Tensor]:
        if self.mode == "ckd_mixup" and lam is None:
            raise ValueError("CKDLoss(mode='ckd_mixup') needs lam")
        delta_s = combine(s_pos, s_neg, self.mode, lam)
        terms: dict[str, Tensor] = {}
        if self.w_cls:
            delta_y = combine(y_pos.to(delta_s.dtype), y_neg.to(delta_s.dtype), self.mode, lam)
            terms["cls"] = self.w_cls * F.mse_loss(delta_s, delta_y)
        if self.w_rel or self.w_kd:
            delta_t = combine(t_pos.detach(), t_neg.detach(), self.mode, lam)
            if self.w_rel:
                terms["rel"] = self.w_rel * F.mse_loss(delta_s, delta_t)
            if self.w_kd:
                terms["kd"] = self.w_kd * distill_kl(delta_s, delta_t, self.T)
        return terms
