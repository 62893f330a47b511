"""Self-supervised KD with SVD (Lee, Kim & Song, ECCV 2018, "Self-supervised Knowledge Distillation
Using Singular Value Decomposition"), in the form of the RepDistiller benchmark.

Each feature map (N, C, H, W) is read as N matrices X (H*W, C) and decomposed X = U S V^T. The teacher
keeps its top k right singular vectors, the student its top k + 3; every student vector set is
aligned to the teacher's by keeping, for each teacher vector, the student vector of largest
|cosine| with the sign of that cosine. Both sets are scaled by the teacher's (L2-normalised) top-k
singular values. Between consecutive layers l-1, l the per-channel RBF correlation is

    R[n, i, j, m] = exp( -(v_l[n, i, m] - v_{l-1}[n, j, m])^2 / 8 ),

and the loss of layer l >= 1 is sum (R_s - R_t)^2 / N (non-finite entries dropped), so ``KDSVD``
returns len(g) - 1 losses. Student and teacher must have equal channel counts per layer.

One deliberate difference from RepDistiller: a singular vector is only defined up to sign, and the
loss depends on the teacher's signs, so each right singular vector is flipped to make its entry of
largest magnitude positive. RepDistiller keeps whatever sign the SVD backend returns (CPU and CUDA
may differ); this makes the loss a function of the features alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distiller_zoo.AT import check_paired
from distiller_zoo.terms import FeatureTerm, TermContext, sum_of

# number of extra student singular vectors searched when aligning to the teacher's
EXTRA_STUDENT_VECTORS = 3
# RBF bandwidth: exp(-d^2 / RBF_DENOMINATOR)
RBF_DENOMINATOR = 8.0


def finite_or_zero(x: Tensor) -> Tensor:
    """x with every NaN / inf entry replaced by 0."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def truncated_svd(feat: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """SVD of each (H*W, C) sample matrix, sign-canonicalised, truncated to n components and L2-normalised.

    Returns u (N, H*W, n), s (N, n) normalised over the n values, v (N, C, n) with unit columns.
    """
    if feat.dim() != 4:
        raise ValueError(f"KDSVD expects 4-d (N, C, H, W) feature maps, got shape {tuple(feat.shape)}")
    x = feat.flatten(2).transpose(1, 2)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    u, s, v = finite_or_zero(u), finite_or_zero(s), finite_or_zero(vh.transpose(1, 2))
    largest = torch.gather(v, 1, v.abs().argmax(dim=1, keepdim=True))
    sign = torch.where(largest < 0, -1.0, 1.0).to(v.dtype)
    u, v = u * sign, v * sign
    return F.normalize(u[:, :, :n], dim=1), F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def align_singular_vectors(v_s: Tensor, v_t: Tensor) -> Tensor:
    """For each teacher vector, the student vector of largest |cosine|, times the sign of that cosine."""
    cosine = v_s.transpose(1, 2) @ v_t
    best = cosine.abs().amax(dim=1, keepdim=True)
    mask = torch.where(cosine.abs() == best, torch.sign(cosine), torch.zeros_like(cosine))
    return v_s @ mask


def rbf_correlation(v: Tensor, v_prev: Tensor) -> Tensor:
    """exp(-(v[n, i, m] - v_prev[n, j, m])^2 / 8): (N, C, k), (N, C', k) -> (N, C, C', k)."""
    return torch.exp(-(v.unsqueeze(2) - v_prev.unsqueeze(1)).pow(2) / RBF_DENOMINATOR)


class KDSVD(nn.Module):
    """KD-SVD loss of Lee et al. (2018): RBF correlations of aligned singular vectors across consecutive layers."""

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"KDSVD needs k >= 1 singular vectors, got {k}")
        self.k = k

    def forward(self, g_s: Sequence[Tensor], g_t: Sequence[Tensor]) -> list[Tensor]:
        check_paired(g_s, g_t, "KDSVD")
        losses: list[Tensor] = []
        v_s_prev: Tensor | None = None
        v_t_prev: Tensor | None = None
        for f_s, f_t in zip(g_s, g_t):
            if f_s.shape[1] != f_t.shape[1]:
                raise ValueError(
                    f"KDSVD needs equal student and teacher channel counts per layer, got {f_s.shape[1]} and {f_t.shape[1]}"
                )
            _, s_t, v_t = truncated_svd(f_t.detach(), self.k)
            _, _, v_s = truncated_svd(f_s, self.k + EXTRA_STUDENT_VECTORS)
            v_s = align_singular_vectors(v_s, v_t)
            scale = s_t.unsqueeze(1)
            v_t, v_s = v_t * scale, v_s * scale
            if v_s_prev is not None and v_t_prev is not None:
                diff = (rbf_correlation(v_s, v_s_prev) - rbf_correlation(v_t, v_t_prev)).pow(2)
                losses.append(finite_or_zero(diff).sum() / f_s.shape[0])
            v_s_prev, v_t_prev = v_s, v_t
        return losses


def check_equal_channels(name: str, model_s: str, model_t: str, s_shapes: Sequence[Sequence[int]],
                         t_shapes: Sequence[Sequence[int]]) -> None:
    """Raise ValueError when the student and teacher maps differ in channel count anywhere."""
    s_c, t_c = [int(s[0]) for s in s_shapes], [int(t[0]) for t in t_shapes]
    if s_c != t_c:
        raise ValueError(f"--distill {name} needs equal student and teacher channel counts per layer, but "
                         f"{model_s} has {s_c} and {model_t} has {t_c}; pick a matching pair such as "
                         "resnet20/resnet56, wrn_16_2/wrn_40_2 or vgg8/vgg13")


class KDSVDTerm(FeatureTerm):
    """``--distill kdsvd``: KD-SVD (k = 1) across consecutive stage outputs, feats[1:-1], summed."""

    ARGS = ("model_s", "model_t")  # named in the message of check

    @classmethod
    def layers(cls, n_feats: int, **args: Any) -> list[int]:
        return list(range(1, n_feats - 1))

    @classmethod
    def check(cls, s_shapes: Sequence[Sequence[int]], t_shapes: Sequence[Sequence[int]], *, model_s: str,
              model_t: str) -> None:
        s_idx, t_idx = cls.paired_layers(len(s_shapes), len(t_shapes), model_s=model_s, model_t=model_t)
        check_equal_channels("kdsvd", model_s, model_t, [s_shapes[i] for i in s_idx], [t_shapes[j] for j in t_idx])

    def __init__(self, ctx: TermContext, signed: bool = False, **args: Any) -> None:
        super().__init__(ctx, signed, **args)
        self.criterion = KDSVD()

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        return sum_of(self.criterion(feats_s, feats_t))
