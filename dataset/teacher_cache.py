"""Query the teacher once per training image (and view), cache its outputs, count every query.

In the few-teacher-inference setting the teacher is the expensive resource: it sees each training
image of the subset ``views`` times, here, and never again (never the validation split). The training
loop reads the cached logits and features from the returned :class:`TrainPool`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dataset.augment import DeviceAugment, crop_flip, draw_crop_params
from helper.errors import UserError


class CountingModule(nn.Module):
    """Wraps a module and adds the batch size of every forward call to ``self.calls``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.calls += int(x.shape[0])
        return self.module(x, *args, **kwargs)


@dataclass
class TrainPool:
    """The training items (image views) with their cached teacher outputs, all on the run device.

    Item ``m`` is view ``m // n_images`` of training image ``image_ids[m] = m % n_images``; view 0 is the clean image.
    """

    images: torch.Tensor  # uint8 [M, 3, S, S] as stored (S >= the model input), M = n_images * views
    labels: torch.Tensor  # int64 [M]
    image_ids: torch.Tensor  # int64 [M], CPU
    n_images: int
    views: int
    teacher_logits: torch.Tensor  # float32 [M, C]
    teacher_feats: dict[int, torch.Tensor] = field(default_factory=dict)  # [M, ...] in feat_dtype
    teacher_calls: int = 0

    @property
    def n_items(self) -> int:
        return int(self.labels.shape[0])


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def build_train_pool(
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    augment: DeviceAugment,
    device: torch.device | str,
    views: int = 1,
    seed: int = 0,
    feat_layers: Sequence[int] = (),
    batch_size: int = 512,
    feat_dtype: torch.dtype = torch.float32,
    amp: bool = False,
    query_teacher: bool = True,
    num_classes: int | None = None,
) -> TrainPool:
    """Pass every training image (``views`` times) through the teacher once and cache the outputs.

    View 0 is the clean image; views 1..views-1 are same-size random crop + flip views (zero padding
    ``augment.view_padding``: 4 pixels for CIFAR and for Cars' 64x64 images) drawn once from
    ``torch.Generator().manual_seed(seed)`` on the CPU, so a seed gives the same views on every device. The teacher
    sees ``augment.eval_view`` of each item: the item itself for CIFAR, its centre crop when images are stored
    larger than the model input (Cars: the centre 56x56 of a 64x64 view is a RandomCrop(56) + flip of the image).
    ``teacher(x, is_feat=True)`` is used only when ``feat_layers`` is non-empty. ``teacher_calls`` counts the
    images that went through the teacher (``n * views``).

    ``query_teacher=False`` (methods that never read teacher outputs, e.g. the cross-entropy-only student) builds
    the same pool without a single teacher call: the logits are zeros of width ``num_classes`` and
    ``teacher_calls`` is 0.
    """
    device = torch.device(device)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise UserError(f"training images must be square uint8 [N, 3, S, S], got {images.dtype} {tuple(images.shape)}")
    n = int(images.shape[0])
    if n < 1 or labels.shape != (n,):
        raise UserError(f"need at least one training image and one label per image, got {n} images and {tuple(labels.shape)} labels")
    if views < 1:
        raise UserError(f"--teacher_views must be at least 1, got {views}")
    if batch_size < 1:
        raise UserError(f"the teacher batch size must be at least 1, got {batch_size}")
    counter = teacher if isinstance(teacher, CountingModule) else CountingModule(teacher)
    counter.eval()
    calls_before = counter.calls
    total = n * views

    size = int(images.shape[-1])
    pool_images = torch.empty((total, 3, size, size), dtype=torch.uint8, device=device)
    clean = images.to(device)
    pool_images[:n] = clean
    if views > 1:
        generator = torch.Generator().manual_seed(int(seed))
        view_pad = augment.view_padding(size)
        offsets, flips = draw_crop_params((views - 1) * n, generator, flip=True, max_offset=2 * view_pad)
        chunk = max(batch_size, 4096)
        for view in range(1, views):
            base = (view - 1) * n
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                pool_images[view * n + start: view * n + stop] = crop_flip(
                    clean[start:stop], offsets[base + start: base + stop], flips[base + start: base + stop], pad=view_pad)
    del clean

    feat_layers = tuple(int(i) for i in feat_layers)
    logits_out: torch.Tensor | None = None
    feats_out: dict[int, torch.Tensor] = {}
    if not query_teacher:
        if num_classes is None:
            raise ValueError("num_classes is required when the teacher is not queried")
        logits_out = torch.zeros((total, num_classes), dtype=torch.float32, device=device)
    with torch.no_grad(), _autocast(device, amp):
        for start in range(0, total if query_teacher else 0, batch_size):
            stop = min(start + batch_size, total)
            x = augment.normalize_eval(pool_images[start:stop])
            if feat_layers:
                feats, logits = counter(x, is_feat=True)
                if start == 0:
                    for i in feat_layers:
                        if not -len(feats) <= i < len(feats):
                            raise UserError(f"the teacher returns {len(feats)} feature maps, so feature index {i} does not exist; "
                                            f"use an index below {len(feats)}")
                        feats_out[i] = torch.empty((total, *feats[i].shape[1:]), dtype=feat_dtype, device=device)
                for i in feat_layers:
                    feats_out[i][start:stop] = feats[i]
            else:
                logits = counter(x)
            if logits_out is None:
                logits_out = torch.empty((total, *logits.shape[1:]), dtype=torch.float32, device=device)
            logits_out[start:stop] = logits
    assert logits_out is not None

    return TrainPool(
        images=pool_images,
        labels=labels.to(device=device, dtype=torch.int64).repeat(views),
        image_ids=torch.arange(n, dtype=torch.int64).repeat(views),
        n_images=n,
        views=views,
        teacher_logits=logits_out,
        teacher_feats=feats_out,
        teacher_calls=counter.calls - calls_before,
    )
