"""Comparative Knowledge Distillation (Wilf, Xu, Liang, Obolenskiy, Fried & Morency, 2023, arXiv).

CKD teaches the student the teacher's interpretation of the *difference* between two groups of
samples, so every cached teacher call is reused in many comparisons. For a positive group P and
a negative group N of g images each (group means of logits, labels as class histograms):

    Delta_s = combine(mean_{x in P} s(x), mean_{x in N} s(x))
    Delta_t = combine(mean_{x in P} t(x), mean_{x in N} t(x))      (cached teacher logits)
    Delta_y = combine(hist(P), hist(N))

    L_cls = MSE(Delta_s, Delta_y)
    L_rel = MSE(Delta_s, Delta_t)

(unweighted: the method weighs them, w_cls and w_rel). (Delta_s, Delta_t) is also the logit pair that the
method's logit-pair terms see: with --w_kd, Hinton KD on the combined logits, KD_T(Delta_s, Delta_t).

with combine = the difference ('ckd', the comparative loss), the equal-weight average ('ckd_add')
or a lam-weighted average ('ckd_mixup', lam drawn by the caller) of the two group summaries.
MSE is the mean over all elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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

    ``forward`` returns the unweighted terms named in ``terms`` (of ``cls``, ``rel``) as a dict, in that order;
    a term not named is neither computed nor present. :meth:`combined` gives the combined summaries themselves,
    (Delta_s, Delta_t, Delta_y), and :meth:`terms_of` the terms on them.
    """

    TERMS = ("cls", "rel")

    def __init__(self, mode: str = "ckd", terms: tuple[str, ...] = TERMS) -> None:
        super().__init__()
        if mode not in CKD_MODES:
            raise ValueError(f"unknown CKD mode {mode!r}; expected one of {CKD_MODES}")
        unknown = [t for t in terms if t not in self.TERMS]
        if unknown:
            raise ValueError(f"unknown CKD terms {unknown}; expected some of {self.TERMS}")
        self.mode = mode
        self.terms = tuple(terms)

    def combined(
        self,
        s_pos: Tensor,
        s_neg: Tensor,
        t_pos: Tensor,
        t_neg: Tensor,
        y_pos: Tensor,
        y_neg: Tensor,
        lam: Tensor | float | None = None,
        teacher: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(Delta_s, Delta_t, Delta_y): Delta_t when the 'rel' term is computed or ``teacher`` asks for it (the logit
        pair (Delta_s, Delta_t) of logit-pair terms), Delta_y when the 'cls' term is computed (else None)."""
        if self.mode == "ckd_mixup" and lam is None:
            raise ValueError("CKDLoss(mode='ckd_mixup') needs lam")
        delta_s = combine(s_pos, s_neg, self.mode, lam)
        delta_y = delta_t = None
        if "cls" in self.terms:
            delta_y = combine(y_pos.to(delta_s.dtype), y_neg.to(delta_s.dtype), self.mode, lam)
        if "rel" in self.terms or teacher:
            delta_t = combine(t_pos.detach(), t_neg.detach(), self.mode, lam)
        return delta_s, delta_t, delta_y

    def terms_of(self, delta_s: Tensor, delta_t: Tensor | None, delta_y: Tensor | None) -> dict[str, Tensor]:
        """The unweighted terms on the combined summaries."""
        terms: dict[str, Tensor] = {}
        if "cls" in self.terms:
            terms["cls"] = F.mse_loss(delta_s, delta_y)
        if "rel" in self.terms:
            terms["rel"] = F.mse_loss(delta_s, delta_t)
        return terms

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
        return self.terms_of(*self.combined(s_pos, s_neg, t_pos, t_neg, y_pos, y_neg, lam))
