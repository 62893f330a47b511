"""Multi-level logit distillation, MLKD (Jin et al., CVPR 2023, "Multi-Level Logit Distillation", Eq. 2-8), computed as
the authors' code computes it.

With p = softmax(z / T) as [B, C] matrices, for a weak view (w) and a strong view (s) of the same B images:

  instance level  kd(s, t, T) = T^2 * (1/B) sum_i KL(p_t[i] || p_s[i])
  class level     cc_loss(s, t, T) = (1/C) * || p_t^T p_t - p_s^T p_s ||_F^2      (C x C class correlations)
  batch level     bc_loss(s, t, T) = (1/B) * || p_t p_t^T - p_s p_s^T ||_F^2      (B x B sample correlations)

over the temperatures {T, 3, 5, 2, 6} (T = the base temperature, 4 in the paper's CIFAR-100 runs). The confidence
masks come from the teacher's weak view at temperature 1: a sample is kept when its top probability is at most the
batch median, a class when its summed probability is at most the median over classes (``np.percentile(x, 50)``,
linear interpolation). As in the authors' code, each loss is reduced to a scalar before the mask multiplies it, so a
mask enters as the *fraction* of samples (classes) it keeps: (loss * mask).mean() = loss * mean(mask). The total is

  L = sum_T frac * kd(w, T) + [kd(s, T) + kd(s, 3) + kd(s, 5) + kd(w, 2) + kd(w, 6)]
      + sum_T class_frac * cc_loss(w, T) + sum_T frac * bc_loss(w, T),

which keeps two details of the authors' code: the T = 2 and T = 6 terms of the strong view's instance loss read the
weak view, and the strong view's class and batch terms are not part of the loss. With logit standardization
(``logit_stand``) only the instance-level terms standardize their logits first, as in the logit-standardization code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distiller_zoo.LS import logit_standardize
from distiller_zoo.terms import TermContext

# the other temperatures of the authors' code, after the base temperature
OTHER_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)
VIEWS = 2  # a weak and a strong view of each image


def kd_loss(logits_s: Tensor, logits_t: Tensor, temperature: float, logit_stand: bool = False) -> Tensor:
    """T^2 * batch mean of KL(softmax(t/T) || softmax(s/T)), after logit standardization when ``logit_stand``."""
    if logit_stand:
        logits_s, logits_t = logit_standardize(logits_s), logit_standardize(logits_t)
    log_p_s = F.log_softmax(logits_s / temperature, dim=1)
    log_p_t = F.log_softmax(logits_t.detach() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True) / logits_s.shape[0] * temperature**2


def cc_loss(logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
    """Class correlation: ||p_t^T p_t - p_s^T p_s||_F^2 / C, p = softmax(z / T)."""
    p_s = F.softmax(logits_s / temperature, dim=1)
    p_t = F.softmax(logits_t.detach() / temperature, dim=1)
    return ((p_t.t() @ p_t - p_s.t() @ p_s) ** 2).sum() / logits_t.shape[1]


def bc_loss(logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
    """Batch correlation: ||p_t p_t^T - p_s p_s^T||_F^2 / B, p = softmax(z / T)."""
    p_s = F.softmax(logits_s / temperature, dim=1)
    p_t = F.softmax(logits_t.detach() / temperature, dim=1)
    return ((p_t @ p_t.t() - p_s @ p_s.t()) ** 2).sum() / logits_t.shape[0]


def confidence_fractions(logits_t_weak: Tensor) -> tuple[Tensor, Tensor]:
    """(fraction of samples whose top teacher probability is at most the batch median, fraction of classes whose summed
    teacher probability is at most the median over classes), from softmax(weak teacher logits)."""
    with torch.no_grad():
        p = F.softmax(logits_t_weak.float(), dim=1)
        confidence = p.max(dim=1).values
        class_confidence = p.sum(dim=0)
        sample_frac = (confidence <= torch.quantile(confidence, 0.5)).float().mean()
        class_frac = (class_confidence <= torch.quantile(class_confidence, 0.5)).float().mean()
    return sample_frac, class_frac


def mlkd_loss(s_weak: Tensor, t_weak: Tensor, s_strong: Tensor, t_strong: Tensor, temperature: float,
              logit_stand: bool = False) -> Tensor:
    """The MLKD loss of the module docstring (unweighted: the authors multiply every term by the KD weight)."""
    temps = (float(temperature), *OTHER_TEMPERATURES)
    frac, class_frac = confidence_fractions(t_weak)
    frac, class_frac = frac.to(s_weak.dtype), class_frac.to(s_weak.dtype)
    kd_weak = sum(kd_loss(s_weak, t_weak, t, logit_stand) for t in temps) * frac
    kd_strong = sum(kd_loss(s_strong, t_strong, t, logit_stand) for t in temps[:3])
    kd_strong = kd_strong + sum(kd_loss(s_weak, t_weak, t, logit_stand) for t in temps[3:])
    cc_weak = sum(cc_loss(s_weak, t_weak, t) for t in temps) * class_frac
    bc_weak = sum(bc_loss(s_weak, t_weak, t) for t in temps) * frac
    return kd_weak + kd_strong + cc_weak + bc_weak


class MLKD(nn.Module):
    """MLKD loss on (student, teacher) logits of a weak and a strong view of the same images."""

    def __init__(self, temperature: float = 4.0, logit_stand: bool = False) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.logit_stand = bool(logit_stand)

    def forward(self, s_weak: Tensor, t_weak: Tensor, s_strong: Tensor, t_strong: Tensor) -> Tensor:
        return mlkd_loss(s_weak, t_weak, s_strong, t_strong, self.temperature, self.logit_stand)


class MLKDTerm(MLKD):
    """``--relational mlkd``: MLKD with base temperature ``--kd_T`` on two views of each image. Its table row sets
    ``image_views=2``, so the logits arrive view-major: the first half of the rows is view 0 (weak), the second half
    view 1 (strong) of the same images; with ``--logit_stand`` its instance-level terms standardize their logits."""

    ARGS = ("kd_T", "logit_stand")

    def __init__(self, ctx: TermContext, *, kd_T: float, logit_stand: bool = False) -> None:
        super().__init__(temperature=float(kd_T), logit_stand=bool(logit_stand))

    def forward(self, logits_s: Tensor, logits_t: Tensor, labels: Tensor | None, batch: dict[str, Any]) -> Tensor:
        if logits_s.shape[0] % VIEWS:
            raise ValueError("MLKDTerm needs two views of each image; its table row must say image_views=2")
        s_weak, s_strong = logits_s.chunk(VIEWS)
        t_weak, t_strong = logits_t.chunk(VIEWS)
        return super().forward(s_weak, t_weak, s_strong, t_strong)
