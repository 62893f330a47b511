"""Mixup-family augmentation baselines on cached teacher logits (few-teacher-inference KD).

* mixup  (Zhang et al., ICLR 2018, "mixup: Beyond Empirical Risk Minimization"):
  x = lam * x_1 + (1 - lam) * x_2 with lam ~ Beta(alpha, alpha).
* mixup3: the same with three image sets and weights ~ Dirichlet(alpha, alpha, alpha) (alpha = 1).
* cutmix (Yun et al., ICCV 2019, "CutMix", Sec. 3.1 / Alg. A1): paste a box of area (1 - lam) * H * W
  from x_2 into x_1 at a uniformly random centre, clip it to the image, and recompute
  lam = 1 - box_area / (H * W).

The mixed image is not sent to the teacher (that would cost a teacher call). Instead the loss mixes
the per-source targets with the same weights: sum_i w_i * loss(student(x), target_i), where target_i
is the label or the cached teacher logits of source i.

All randomness comes from a caller-owned ``torch.Generator`` (its state goes into the checkpoint),
so a run is reproducible and resumes on the same random stream. Gamma variates are drawn from the
generator with the Marsaglia-Tsang method (exact exponentials for shape 1), so any alpha > 0 works.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distiller_zoo.KD import distill_kl


def _uniform_open_closed(generator: torch.Generator) -> float:
    """One U(0, 1] variate from the generator (never exactly 0)."""
    return 1.0 - torch.rand((), generator=generator, dtype=torch.float64, device=generator.device).item()


def _standard_normal(generator: torch.Generator) -> float:
    return torch.randn((), generator=generator, dtype=torch.float64, device=generator.device).item()


def sample_gamma(shape: float, generator: torch.Generator) -> float:
    """One Gamma(shape, 1) variate drawn from ``generator`` (Marsaglia & Tsang, 2000; exact -log U for shape 1)."""
    if shape <= 0:
        raise ValueError(f"gamma shape must be positive, got {shape}")
    if shape == 1.0:
        return -math.log(_uniform_open_closed(generator))
    if shape < 1.0:
        # Gamma(a) = Gamma(a + 1) * U^(1/a)  (Marsaglia & Tsang, Sec. 6)
        return sample_gamma(shape + 1.0, generator) * _uniform_open_closed(generator) ** (1.0 / shape)
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = _standard_normal(generator)
        v = (1.0 + c * x) ** 3
        if v <= 0:
            continue
        if math.log(_uniform_open_closed(generator)) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v


def sample_mixup_weights(k: int, generator: torch.Generator, alpha: float = 1.0) -> Tensor:
    """Mixing weights w ~ Dirichlet(alpha, ..., alpha) of length k, as a CPU float tensor summing to 1.

    k = 2 gives [lam, 1 - lam] with lam ~ Beta(alpha, alpha) (mixup; alpha = 1 is Uniform(0, 1));
    k = 3 with alpha = 1 gives Dirichlet(1, 1, 1) (mixup3).
    """
    if k < 2:
        raise ValueError(f"need at least two image sets to mix, got k={k}")
    gammas = torch.tensor([sample_gamma(alpha, generator) for _ in range(k)], dtype=torch.float64)
    return (gammas / gammas.sum()).to(torch.get_default_dtype())


def mix_images(images: Sequence[Tensor], weights: Tensor) -> Tensor:
    """sum_i weights[i] * images[i]: one scalar weight per image set, shared by the whole batch."""
    if len(images) != weights.numel():
        raise ValueError(f"{len(images)} image sets but {weights.numel()} weights")
    w = weights.to(device=images[0].device, dtype=images[0].dtype)
    mixed = w[0] * images[0]
    for i in range(1, len(images)):
        mixed = mixed + w[i] * images[i]
    return mixed


def cutmix_box(height: int, width: int, lam: float | Tensor, generator: torch.Generator) -> tuple[int, int, int, int, float]:
    """CutMix box (y0, y1, x0, x1, lam_adjusted) of area about (1 - lam) * H * W at a random centre.

    The box is clipped to the image, and lam is recomputed as 1 - box_area / (H * W): the exact
    fraction of the first image that stays visible, i.e. the weight of the first image's targets.
    """
    cut_ratio = math.sqrt(1.0 - float(lam))
    cut_h, cut_w = int(height * cut_ratio), int(width * cut_ratio)
    cy = int(torch.randint(height, (), generator=generator, device=generator.device).item())
    cx = int(torch.randint(width, (), generator=generator, device=generator.device).item())
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    lam_adjusted = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    return y0, y1, x0, x1, lam_adjusted


def apply_cutmix(x1: Tensor, x2: Tensor, box: Sequence[int | float]) -> Tensor:
    """Copy of x1 [..., H, W] with the box region (y0, y1, x0, x1, ...) taken from x2."""
    y0, y1, x0, x1_ = (int(v) for v in box[:4])
    mixed = x1.clone()
    mixed[..., y0:y1, x0:x1_] = x2[..., y0:y1, x0:x1_]
    return mixed


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """-sum_c p_c * log softmax(logits)_c, averaged over the batch."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class MixupLoss(nn.Module):
    """Loss for a student on mixed images: each target term is the weight-mixed sum over the image sources.

    cls = sum_i w_i CE(s, y_i)
    rel = sum_i w_i softCE(s, softmax(t_i))      (loss_fn == 0)
          sum_i w_i KD_T(s, t_i)                 (loss_fn == 1)
    Unweighted (the method weighs them, w_cls and w_rel); only the terms named in ``terms`` are computed and
    returned, in that order. The pairs (s, t_i) with weights w_i are also what the method's logit-pair terms see
    (with --w_kd: kd = sum_i w_i KD_T(s, t_i)).
    """

    TERMS = ("cls", "rel")

    def __init__(self, terms: tuple[str, ...] = TERMS, loss_fn: int = 0, T: float = 4.0) -> None:
        super().__init__()
        if loss_fn not in (0, 1):
            raise ValueError(f"loss_fn must be 0 (soft cross-entropy) or 1 (KL with temperature), got {loss_fn}")
        unknown = [t for t in terms if t not in self.TERMS]
        if unknown:
            raise ValueError(f"unknown mixup terms {unknown}; expected some of {self.TERMS}")
        self.terms = tuple(terms)
        self.loss_fn = loss_fn
        self.T = T

    def _rel_term(self, s: Tensor, t: Tensor) -> Tensor:
        if self.loss_fn == 0:
            return soft_cross_entropy(s, F.softmax(t.detach(), dim=1))
        return distill_kl(s, t, self.T)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Sequence[Tensor],
        labels: Sequence[Tensor],
        weights: Tensor,
    ) -> dict[str, Tensor]:
        w = weights.to(device=student_logits.device, dtype=student_logits.dtype)
        k = w.numel()
        terms: dict[str, Tensor] = {}
        if "cls" in self.terms:
            if len(labels) != k:
                raise ValueError(f"{len(labels)} label sets but {k} weights")
            terms["cls"] = sum(w[i] * F.cross_entropy(student_logits, labels[i]) for i in range(k))
        if "rel" in self.terms:
            if len(teacher_logits) != k:
                raise ValueError(f"{len(teacher_logits)} teacher logit sets but {k} weights")
            terms["rel"] = sum(w[i] * self._rel_term(student_logits, teacher_logits[i]) for i in range(k))
        return terms
