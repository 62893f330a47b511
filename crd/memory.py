"""Memory bank for Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020, "CRD", Sec. 3.4).

Two banks hold one unit-norm embedding per training sample: ``memory_v1`` for the student side and
``memory_v2`` for the teacher side. For a batch, each anchor is scored against K+1 bank rows (its
own row first, then K negatives chosen by the caller's sampler):

    h(v, m) = exp(<v, m> / T) / Z,

where Z approximates the partition function, n_data * E[exp(<v, m>/T)], measured once on the
first batch and then kept fixed (as in the authors' code). Afterwards the positive rows are
updated with momentum, m <- normalize(momentum * m + (1 - momentum) * v).

Banks and the constants [K, T, Z_v1, Z_v2, momentum] are registered buffers, so they are part of
the state_dict: a resumed run continues with the same banks and the same Z. The forward pass
performs no host synchronisation (Z is set with a device-side ``torch.where``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def momentum_update(bank: Tensor, rows: Tensor, values: Tensor, momentum: float) -> None:
    """In place: bank[rows] <- L2-normalise(momentum * bank[rows] + (1 - momentum) * values)."""
    mixed = bank.index_select(0, rows).mul(momentum).add(values.detach().to(bank.dtype), alpha=1.0 - momentum)
    bank.index_copy_(0, rows, mixed / mixed.norm(dim=1, keepdim=True))


def scores_against_bank(bank: Tensor, contrast_idx: Tensor, anchors: Tensor, T: float) -> Tensor:
    """exp(<bank[contrast_idx[b, k]], anchors[b]> / T) for every anchor b and candidate k: shape [B, K+1, 1].

    Computed in at least float32 with autocast off: with unit vectors and T = 0.07 the scores reach
    exp(1/0.07) ~ 1.6e6, beyond the float16 range.

    When the bank has no more rows than there are candidates (always so for K = 16384 on a few-teacher-inference
    subset), every anchor is scored against the whole bank by one [B, N] matrix product and the candidates are
    picked from that: the same dot products without gathering B * (K+1) bank rows ([64, 16385, 128] floats per
    bank and step). Otherwise the candidate rows are gathered and scored by a batched product.
    """
    batch, n_candidates = contrast_idx.shape
    dtype = torch.promote_types(torch.promote_types(bank.dtype, anchors.dtype), torch.float32)
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        if bank.shape[0] <= batch * n_candidates:
            # a copy: the bank is updated in place after this forward, and the backward needs it as it was here
            rows = bank.detach().to(dtype, copy=True)
            dots = torch.mm(anchors.to(dtype), rows.t()).gather(1, contrast_idx)
        else:
            weights = bank.index_select(0, contrast_idx.reshape(-1)).detach().view(batch, n_candidates, -1)
            dots = torch.bmm(weights.to(dtype), anchors.to(dtype).unsqueeze(2)).squeeze(2)
        return torch.exp(dots / T).unsqueeze(2)


class ContrastMemory(nn.Module):
    """Student and teacher memory banks plus the NCE normalisation constants of CRD (see module docstring)."""

    def __init__(self, inputSize: int, outputSize: int, K: int, T: float = 0.07, momentum: float = 0.5) -> None:
        super().__init__()
        self.n_data = outputSize
        self.K = K
        self.T = T
        self.momentum = momentum
        self.register_buffer("params", torch.tensor([K, T, -1.0, -1.0, momentum]))
        stdv = 1.0 / math.sqrt(inputSize / 3)
        self.register_buffer("memory_v1", torch.rand(outputSize, inputSize).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_v2", torch.rand(outputSize, inputSize).mul_(2 * stdv).add_(-stdv))

    def _normalise(self, out: Tensor, slot: int) -> Tensor:
        """Divide by Z (params[slot]); on the first call set Z = mean(out) * n_data, without a host sync."""
        with torch.no_grad():
            first = out.detach().mean().to(self.params.dtype) * self.n_data
            z = torch.where(self.params[slot] < 0, first, self.params[slot])
            self.params[slot].copy_(z)
        return out / z.to(out.dtype)

    def forward(self, v1: Tensor, v2: Tensor, y: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Scores of student anchors v1 against the teacher bank (out_v1) and of teacher anchors v2
        against the student bank (out_v2), each [B, K+1, 1]; then the momentum update of rows y."""
        if idx is None:
            raise ValueError("ContrastMemory needs contrast_idx [B, K+1] (column 0 = positive) from the CRD sampler")
        if idx.dim() != 2 or idx.shape != (v1.shape[0], self.K + 1):
            raise ValueError(f"contrast_idx must have shape [batch, K+1] = [{v1.shape[0]}, {self.K + 1}], got {tuple(idx.shape)}")
        idx = idx.to(device=self.memory_v1.device, dtype=torch.long)
        y = y.to(device=self.memory_v1.device, dtype=torch.long).reshape(-1)

        out_v2 = scores_against_bank(self.memory_v1, idx, v2, self.T)
        out_v1 = scores_against_bank(self.memory_v2, idx, v1, self.T)
        out_v1 = self._normalise(out_v1, 2).contiguous()
        out_v2 = self._normalise(out_v2, 3).contiguous()

        with torch.no_grad():
            momentum_update(self.memory_v1, y, v1, self.momentum)
            momentum_update(self.memory_v2, y, v2, self.momentum)
        return out_v1, out_v2
