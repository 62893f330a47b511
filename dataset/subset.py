"""The few-teacher-inference subset: ``subset_size`` training images, split train/validation.

The draw uses its own ``numpy.random.default_rng(seed)``, so nothing else that consumes random
numbers (model initialisation, W&B, samplers) can shift which images are drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from helper.errors import UserError


@dataclass
class SubsetSplit:
    """Indices into the full training set, in draw order: ``train_idx`` and ``val_idx`` are disjoint."""

    train_idx: np.ndarray  # int64 [n_train]
    val_idx: np.ndarray  # int64 [n_val]

    @property
    def n_train(self) -> int:
        return int(self.train_idx.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.val_idx.shape[0])


def split_sizes(subset_size: int, train_val_frac: float) -> tuple[int, int]:
    """(n_train, n_val) with n_train = round(subset_size * train_val_frac), both at least 1."""
    n_train = min(max(round(subset_size * train_val_frac), 1), subset_size - 1)
    return n_train, subset_size - n_train


def min_subset_size(batch_size: int, train_val_frac: float) -> int:
    """The smallest subset whose training part holds one full batch (and leaves one validation image)."""
    size = max(2, math.floor(batch_size / train_val_frac) - 2)
    while split_sizes(size, train_val_frac)[0] < batch_size:
        size += 1
    return size


def make_subset_split(n_total: int, subset_size: int, train_val_frac: float, seed: int, batch_size: int) -> SubsetSplit:
    """Draw ``subset_size`` distinct images out of ``n_total`` and split them train/validation.

    Raises :class:`UserError` (before any teacher call) for an impossible request.
    """
    if not 0.0 < train_val_frac < 1.0:
        raise UserError(f"--train_val_frac must be strictly between 0 and 1 (a fraction of the subset used for training), "
                        f"got {train_val_frac}")
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}")
    if subset_size < 2:
        raise UserError(f"--subset_size must be at least 2 (one training and one validation image), got {subset_size}")
    if subset_size > n_total:
        raise UserError(f"--subset_size {subset_size} is larger than the {n_total}-image training set; "
                        f"pass --subset_size {n_total} or less")
    n_train, _ = split_sizes(subset_size, train_val_frac)
    if n_train < batch_size:
        need = min_subset_size(batch_size, train_val_frac)
        if need <= n_total:
            fix = f"pass --subset_size {need} or more, or lower --batch_size to {n_train} or less"
        else:
            fix = f"lower --batch_size to {n_train} or less"
        raise UserError(f"--subset_size {subset_size} with --train_val_frac {train_val_frac} leaves {n_train} training images, "
                        f"fewer than one batch of --batch_size {batch_size}; {fix}")
    rng = np.random.default_rng(seed)
    drawn = rng.choice(n_total, size=subset_size, replace=False).astype(np.int64)
    return SubsetSplit(train_idx=drawn[:n_train].copy(), val_idx=drawn[n_train:].copy())
