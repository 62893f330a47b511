"""Batched data augmentation on the run device: no PIL, no workers, no per-image Python loop.

``use_DA`` 1 is torchvision's ``RandomCrop(32, padding=4)`` and 2 adds ``RandomHorizontalFlip()``:
the padding is zeros in pixel space, so a padded pixel normalises to ``(0 - mean) / std``. The whole
batch is cropped (and flipped) by one ``gather`` from the zero-padded uint8 batch, with the flip folded
into the column indices, then normalised in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from helper.errors import UserError

PAD = 4
SIZE = 32
PADDED = SIZE + 2 * PAD


def draw_crop_params(n: int, generator: torch.Generator, flip: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Offsets ``[n, 2]`` (row, column) in 0..2*PAD and flip flags ``[n]`` (or None), drawn on the generator's device."""
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator, device=generator.device)
    flips = torch.randint(0, 2, (n,), generator=generator, device=generator.device) == 1 if flip else None
    return offsets, flips


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
    """Crop ``x`` (uint8 [B, 3, 32, 32]) at ``offsets`` of its 4-pixel zero padding, mirroring rows where ``flips``.

    Returns uint8 [B, 3, 32, 32]; output pixel (r, c) is padded[oy + r, ox + c] (or ox + 31 - c when flipped).
    """
    batch, channels = x.shape[0], x.shape[1]
    offsets = offsets.to(x.device)
    padded = F.pad(x, (PAD, PAD, PAD, PAD)).reshape(batch, channels, PADDED * PADDED)
    grid = torch.arange(SIZE, device=x.device)
    cols = grid.expand(batch, SIZE)
    if flips is not None:
        cols = torch.where(flips.to(x.device)[:, None], (SIZE - 1) - grid, grid)
    rows = offsets[:, 0:1] + grid  # [B, 32]
    cols = offsets[:, 1:2] + cols  # [B, 32]
    index = (rows[:, :, None] * PADDED + cols[:, None, :]).reshape(batch, 1, SIZE * SIZE)
    out = torch.gather(padded, 2, index.expand(batch, channels, SIZE * SIZE))
    return out.reshape(batch, channels, SIZE, SIZE)


def random_views(x: torch.Tensor, n_views: int, generator: torch.Generator) -> torch.Tensor:
    """``n_views`` random crop (4-pixel zero padding) + horizontal flip views of every image, as uint8.

    Returns [n_views, B, 3, 32, 32] on ``x``'s device; the draws come from ``generator`` (view-major order),
    so a CPU generator gives the same views on every device.
    """
    if n_views < 0:
        raise UserError(f"the number of teacher views must not be negative, got {n_views}")
    batch = x.shape[0]
    offsets, flips = draw_crop_params(n_views * batch, generator, flip=True)
    views = crop_flip(x.repeat(n_views, 1, 1, 1), offsets, flips)
    return views.reshape(n_views, batch, *x.shape[1:])


class DeviceAugment:
    """Normalise (and augment) uint8 batches on ``device``; ``use_DA`` 0 none, 1 crop, 2 crop + flip."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], use_DA: int, device: torch.device | str) -> None:
        if use_DA not in (0, 1, 2):
            raise UserError(f"--use_DA must be 0 (none), 1 (random crop) or 2 (random crop + flip), got {use_DA}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise UserError(f"mean and std need three channels with a positive std, got mean={mean} std={std}")
        self.use_DA = int(use_DA)
        self.device = torch.device(device)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device != self._mean.device:
            self._mean, self._std = self._mean.to(device), self._std.to(device)
        return self._mean, self._std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float32 ``(x / 255 - mean) / std``."""
        mean, std = self._constants(x.device)
        out = x.to(torch.float32, copy=True).div_(255.0)
        return out.sub_(mean).div_(std)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a uint8 batch with draws from ``generator`` and return it normalised (float32)."""
        if self.use_DA == 0:
            return self.normalize(x)
        offsets, flips = draw_crop_params(x.shape[0], generator, flip=self.use_DA == 2)
        return self.normalize(crop_flip(x, offsets, flips))

    def random_views(self, x: torch.Tensor, n_views: int, generator: torch.Generator) -> torch.Tensor:
        """See :func:`random_views`."""
        return random_views(x, n_views, generator)
