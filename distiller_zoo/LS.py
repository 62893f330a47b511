"""Logit standardization (Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation", Eq. 9).

Each sample's logit vector is z-scored over its classes before the temperature softmax of KD:

    Z(z) = (z - mean(z)) / (eps + std(z)),    eps = 1e-7,

with the unbiased standard deviation (Bessel's correction, the default of ``Tensor.std``), as the authors' code
computes it. The student then matches the teacher's logit *relations* rather than their range: a logit vector and
any positive affine map of it standardize to the same vector. It is a modifier, not a loss: ``--logit_stand`` applies
it to both student and teacher logits inside KD (``--w_kd``), DKD and MLKD's instance-level KD (the official scope).
"""

from __future__ import annotations

from torch import Tensor

LS_EPS = 1e-7  # added to the standard deviation, as in the authors' code


def logit_standardize(z: Tensor, eps: float = LS_EPS) -> Tensor:
    """Per sample (last dimension = classes): ``(z - mean) / (eps + std)``, std unbiased."""
    mean = z.mean(dim=-1, keepdim=True)
    std = z.std(dim=-1, keepdim=True)
    return (z - mean) / (eps + std)
