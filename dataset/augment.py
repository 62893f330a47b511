"""Batched data augmentation on the run device: no PIL, no workers, no per-image Python loop.

``use_DA`` 1 is torchvision's ``RandomCrop(crop, padding=padding)`` and 2 adds ``RandomHorizontalFlip()``;
the defaults (``crop`` 32, ``padding`` 4) are CIFAR's. The padding is zeros in pixel space, so a padded pixel
normalises to ``(0 - mean) / std``. The whole batch is cropped (and flipped) by one ``gather`` from the
zero-padded uint8 batch, with the flip folded into the column indices, then normalised in float32.

Images stored larger than the crop (Stanford Cars: 64x64 stored, 56x56 crops, no padding) are seen through
:meth:`DeviceAugment.eval_view`, torchvision's ``CenterCrop(crop)``, wherever no random crop is drawn
(``use_DA`` 0, validation, test, the teacher's look at a cached view).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from core.errors import UserError

if TYPE_CHECKING:
    from dataset.cifar100 import ImageSet

PAD = 4  # CIFAR's RandomCrop(32, padding=4)
SIZE = 32


def draw_crop_params(n: int, generator: torch.Generator, flip: bool = True,
                     max_offset: int = 2 * PAD) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Offsets ``[n, 2]`` (row, column) in 0..max_offset and flip flags ``[n]`` (or None), drawn on the generator's device."""
    offsets = torch.randint(0, max_offset + 1, (n, 2), generator=generator, device=generator.device)
    flips = torch.randint(0, 2, (n,), generator=generator, device=generator.device) == 1 if flip else None
    return offsets, flips


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor | None = None,
              size: int | None = None, pad: int = PAD) -> torch.Tensor:
    """Crop ``size`` x ``size`` windows (default: ``x``'s width) of ``x`` (uint8 [B, 3, H, W]) zero-padded by ``pad``
    pixels, at ``offsets`` into the padded image, mirroring columns where ``flips``.

    Returns uint8 [B, 3, size, size]; output pixel (r, c) is padded[oy + r, ox + c] (or ox + size - 1 - c when flipped).
    """
    batch, channels, height, width = x.shape
    size = width if size is None else int(size)
    offsets = offsets.to(x.device)
    padded_width = width + 2 * pad
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    padded = padded.reshape(batch, channels, (height + 2 * pad) * padded_width)
    grid = torch.arange(size, device=x.device)
    cols = grid.expand(batch, size)
    if flips is not None:
        cols = torch.where(flips.to(x.device)[:, None], (size - 1) - grid, grid)
    rows = offsets[:, 0:1] + grid  # [B, size]
    cols = offsets[:, 1:2] + cols  # [B, size]
    index = (rows[:, :, None] * padded_width + cols[:, None, :]).reshape(batch, 1, size * size)
    out = torch.gather(padded, 2, index.expand(batch, channels, size * size))
    return out.reshape(batch, channels, size, size)


def random_views(x: torch.Tensor, n_views: int, generator: torch.Generator, pad: int = PAD) -> torch.Tensor:
    """``n_views`` random crop (``pad``-pixel zero padding) + horizontal flip views of every image, as uint8.

    A view keeps the stored size. Returns [n_views, B, 3, H, W] on ``x``'s device; the draws come from ``generator``
    (view-major order), so a CPU generator gives the same views on every device.
    """
    if n_views < 0:
        raise ValueError(f"the number of views must not be negative, got {n_views}")
    batch = x.shape[0]
    offsets, flips = draw_crop_params(n_views * batch, generator, flip=True, max_offset=2 * pad)
    views = crop_flip(x.repeat(n_views, 1, 1, 1), offsets, flips, pad=pad)
    return views.reshape(n_views, batch, *x.shape[1:])


class DeviceAugment:
    """Normalise (and augment) uint8 batches on ``device``; ``use_DA`` 0 none, 1 crop, 2 crop + flip.

    ``crop`` is the model's input size and ``padding`` the zero padding of the random crop; images stored larger
    than ``crop`` are centre-cropped by :meth:`eval_view` where no random crop is drawn.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], use_DA: int, device: torch.device | str,
                 crop: int = SIZE, padding: int = PAD) -> None:
        if use_DA not in (0, 1, 2):
            raise ValueError(f"use_DA must be 0 (none), 1 (random crop) or 2 (random crop + flip), got {use_DA}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need three channels with a positive std, got mean={mean} std={std}")
        if crop < 1 or padding < 0:
            raise ValueError(f"the crop size must be positive and its padding not negative, got crop={crop} padding={padding}")
        self.use_DA = int(use_DA)
        self.device = torch.device(device)
        self.crop = int(crop)
        self.padding = int(padding)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def for_images(cls, image_set: ImageSet, use_DA: int, device: torch.device | str) -> DeviceAugment:
        """The augmentation of an :class:`~dataset.cifar100.ImageSet`: its mean, std, crop size and crop padding."""
        return cls(image_set.mean, image_set.std, use_DA, device, crop=image_set.crop_size, padding=image_set.crop_padding)

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device != self._mean.device:
            self._mean, self._std = self._mean.to(device), self._std.to(device)
        return self._mean, self._std

    def max_offset(self, size: int) -> int:
        """The largest crop offset into a ``size`` x ``size`` image padded by ``padding`` (offsets run 0..max)."""
        span = int(size) + 2 * self.padding - self.crop
        if span < 0:
            raise UserError(f"images of {size}x{size} pixels are smaller than the {self.crop}x{self.crop} model input "
                            f"(with {self.padding}-pixel padding); store the images at {self.crop}x{self.crop} or larger")
        return span

    def view_padding(self, size: int) -> int:
        """Zero padding of a same-size teacher view of a ``size`` x ``size`` image (4 for CIFAR and for Cars 64 -> 56).

        A view shifts the stored image by up to this many pixels, so the :meth:`eval_view` of a view is a crop at
        an offset in 0..:meth:`max_offset`, the same range the training crop draws from.
        """
        return self.max_offset(size) // 2

    def eval_view(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, S, S] -> its centre ``crop`` x ``crop`` (torchvision's ``CenterCrop``); ``x`` itself when S == crop."""
        height, width = x.shape[-2], x.shape[-1]
        if height == self.crop and width == self.crop:
            return x
        if height < self.crop or width < self.crop:
            raise UserError(f"images of {height}x{width} pixels are smaller than the {self.crop}x{self.crop} model input; "
                            f"store the images at {self.crop}x{self.crop} or larger")
        top = int(round((height - self.crop) / 2.0))
        left = int(round((width - self.crop) / 2.0))
        return x[..., top: top + self.crop, left: left + self.crop]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float32 ``(x / 255 - mean) / std``."""
        mean, std = self._constants(x.device)
        out = x.to(torch.float32, copy=True).div_(255.0)
        return out.sub_(mean).div_(std)

    def normalize_eval(self, x: torch.Tensor) -> torch.Tensor:
        """The model input for evaluation: :meth:`eval_view`, then :meth:`normalize` (just ``normalize`` for CIFAR)."""
        return self.normalize(self.eval_view(x))

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a uint8 batch with draws from ``generator`` and return it normalised (float32, ``crop`` x ``crop``)."""
        if self.use_DA == 0:
            return self.normalize_eval(x)
        max_offset = self.max_offset(x.shape[-1])
        offsets, flips = draw_crop_params(x.shape[0], generator, flip=self.use_DA == 2, max_offset=max_offset)
        return self.normalize(crop_flip(x, offsets, flips, size=self.crop, pad=self.padding))

    def random_views(self, x: torch.Tensor, n_views: int, generator: torch.Generator) -> torch.Tensor:
        """See :func:`random_views`; the padding is :meth:`view_padding` of ``x``'s size."""
        return random_views(x, n_views, generator, pad=self.view_padding(x.shape[-1]))
