"""Query the teacher once per training image (and view), cache its outputs, count every query.

In the few-teacher-inference setting the teacher is the expensive resource: it sees each training
image of the subset ``views`` times, here, and never again (never the validation split). The training
loop reads the cached logits and features from the returned :class:`TrainPool`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.checkpoint import atomic_save, safe_load
from core.device import autocast
from dataset.augment import DeviceAugment, crop_flip, draw_crop_params


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

    def view_items(self, image_idx: torch.Tensor, k: int) -> torch.Tensor:
        """The pool items of ``k`` views of training images ``image_idx`` [B], view-major [k * B]: view j of image i is
        item ``i + (j mod views) * n_images`` (with fewer cached views than ``k``, the cached ones repeat)."""
        return torch.cat([image_idx + (j % self.views) * self.n_images for j in range(k)])

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached teacher outputs and the pool's images."""
        tensors = [self.images, self.labels, self.teacher_logits, *self.teacher_feats.values()]
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def state_dict(self) -> dict[str, Any]:
        """Every field, on the CPU (what a teacher cache file holds)."""
        return {"images": self.images.cpu(), "labels": self.labels.cpu(), "image_ids": torch.as_tensor(self.image_ids).cpu(),
                "n_images": int(self.n_images), "views": int(self.views), "teacher_logits": self.teacher_logits.cpu(),
                "teacher_feats": {int(k): v.cpu() for k, v in self.teacher_feats.items()},
                "teacher_calls": int(self.teacher_calls)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str) -> TrainPool:
        """The pool saved by :meth:`state_dict`, on ``device`` (``image_ids`` stays on the CPU)."""
        device = torch.device(device)
        return cls(images=state["images"].to(device), labels=state["labels"].to(device), image_ids=state["image_ids"].cpu(),
                   n_images=int(state["n_images"]), views=int(state["views"]), teacher_logits=state["teacher_logits"].to(device),
                   teacher_feats={int(k): v.to(device) for k, v in state["teacher_feats"].items()},
                   teacher_calls=int(state["teacher_calls"]))


TEACHER_VIEWS = ("augmented", "clean")


def _drawn_views(clean: torch.Tensor, n_views: int, seed: int, use_DA: int, pad: int, chunk: int = 4096) -> torch.Tensor:
    """``n_views`` random views of every image (view-major, uint8 [n_views * N, ...]): crop with ``use_DA`` >= 1,
    flip too with ``use_DA`` 2; all draws from one CPU generator seeded with ``seed``."""
    n = int(clean.shape[0])
    if n_views <= 0:
        return clean[:0]
    if use_DA == 0:
        return clean.repeat(n_views, 1, 1, 1)
    generator = torch.Generator().manual_seed(int(seed))
    offsets, flips = draw_crop_params(n_views * n, generator, flip=use_DA == 2, max_offset=2 * pad)
    out = torch.empty((n_views * n, *clean.shape[1:]), dtype=torch.uint8, device=clean.device)
    for view in range(n_views):
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            lo, hi = view * n + start, view * n + stop
            out[lo:hi] = crop_flip(clean[start:stop], offsets[lo:hi], None if flips is None else flips[lo:hi], pad=pad)
    return out


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
    teacher_view: str = "augmented",
    preact: bool = False,
) -> TrainPool:
    """Pass every training image (``views`` times) through the teacher once and cache the outputs.

    ``teacher_view="augmented"`` (the published behaviour): the teacher sees ``views`` random views of each image,
    augmented as the student is (``augment.use_DA``: crop, and flip), drawn once; the pool's items are the clean
    image ``views`` times, so the student trains on fresh augmentations of the clean image against the cached
    teacher output of a drawn view. ``teacher_view="clean"``: view 0 is the clean image and views 1..views-1 are
    random crop + flip views; the pool's items are those views themselves.
    Views keep the stored size (zero padding ``augment.view_padding``: 4 pixels for CIFAR and for Cars' 64x64
    images) and are drawn from ``torch.Generator().manual_seed(seed)`` on the CPU, so a seed gives the same views
    on every device. The teacher sees ``augment.eval_view`` of each view: the view itself for CIFAR, its centre crop
    when images are stored larger than the model input (Cars: the centre 56x56 of a 64x64 view is a
    RandomCrop(56) + flip of the image).
    ``teacher(x, is_feat=True)`` is used only when ``feat_layers`` is non-empty; ``preact=True`` caches the
    pre-activation maps instead (``teacher(x, is_feat=True, preact=True)``, e.g. for AB), in the same single pass.
    ``teacher_calls`` counts the images that went through the teacher (``n * views``).

    ``query_teacher=False`` (methods that never read teacher outputs, e.g. the cross-entropy-only student) builds
    the same pool without a single teacher call: the logits are zeros of width ``num_classes`` and
    ``teacher_calls`` is 0.
    """
    device = torch.device(device)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"training images must be square uint8 [N, 3, S, S], got {images.dtype} {tuple(images.shape)}")
    n = int(images.shape[0])
    if n < 1 or labels.shape != (n,):
        raise ValueError(f"need at least one training image and one label per image, got {n} images and {tuple(labels.shape)} labels")
    if views < 1:
        raise ValueError(f"the number of teacher views must be at least 1, got {views}")
    if batch_size < 1:
        raise ValueError(f"the teacher batch size must be at least 1, got {batch_size}")
    if teacher_view not in TEACHER_VIEWS:
        raise ValueError(f"the teacher view must be one of {', '.join(TEACHER_VIEWS)}, got '{teacher_view}'")
    counter = teacher if isinstance(teacher, CountingModule) else CountingModule(teacher)
    counter.eval()
    calls_before = counter.calls
    total = n * views

    clean = images.to(device)
    view_pad = augment.view_padding(int(images.shape[-1]))
    if teacher_view == "augmented":
        # as published: the student trains on fresh augmentations of the clean image, its target is the teacher on
        # the view drawn once here
        pool_images = clean.repeat(views, 1, 1, 1)
        teacher_inputs = _drawn_views(clean, views, seed, augment.use_DA, view_pad)
    else:
        pool_images = torch.cat([clean, _drawn_views(clean, views - 1, seed, 2, view_pad)]) if views > 1 else clean
        teacher_inputs = pool_images
    del clean

    feat_layers = tuple(int(i) for i in feat_layers)
    logits_out: torch.Tensor | None = None
    feats_out: dict[int, torch.Tensor] = {}
    if not query_teacher:
        if num_classes is None:
            raise ValueError("num_classes is required when the teacher is not queried")
        logits_out = torch.zeros((total, num_classes), dtype=torch.float32, device=device)
    with torch.no_grad(), autocast(device, amp):
        for start in range(0, total if query_teacher else 0, batch_size):
            stop = min(start + batch_size, total)
            x = augment.normalize_eval(teacher_inputs[start:stop])
            if feat_layers:
                feats, logits = counter(x, is_feat=True, preact=True) if preact else counter(x, is_feat=True)
                if start == 0:
                    for i in feat_layers:
                        if not -len(feats) <= i < len(feats):
                            raise ValueError(f"the teacher returns {len(feats)} feature maps, so feature index {i} does not "
                                             f"exist; use an index below {len(feats)}")
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


def load_or_build_cache(
    path: str | Path,
    teacher_sha256: str | None,
    build: Callable[[], tuple[TrainPool, dict[str, Any]]],
    device: torch.device | str,
    read: Callable[[Path], Any] | None = None,
) -> tuple[TrainPool, dict[str, Any], bool]:
    """The teacher cache of a run: reloaded from ``path`` when it was built from the same teacher file, else built.

    ``build()`` queries the teacher and returns ``(pool, meta)``; ``meta`` must hold ``teacher_sha256``. A reload makes
    no teacher call. ``teacher_sha256=None`` (the teacher file is gone) accepts any saved cache. ``read(path)`` loads
    and checks a saved cache (it raises for a damaged one and leaves the file as it is; default: ``safe_load``). A new
    cache is written atomically. Returns ``(pool, meta, reused)``.
    """
    path = Path(path)
    if path.is_file():
        saved = read(path) if read is not None else safe_load(path, map_location="cpu")
        if teacher_sha256 is None or saved["meta"]["teacher_sha256"] == teacher_sha256:
            return TrainPool.from_state_dict(saved["pool"], device), saved["meta"], True
    pool, meta = build()
    atomic_save({"pool": pool.state_dict(), "meta": meta}, path)
    return pool, meta, False
