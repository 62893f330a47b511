"""The few-teacher-inference subset: ``subset_size`` training images, split train/validation.

The draw uses its own ``numpy.random.default_rng(seed)``, so nothing else that consumes random
numbers (model initialisation, W&B, samplers) can shift which images are drawn.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np


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

    An impossible request raises ValueError: a run checks its flags against the data first
    (:func:`helper.config.check_subset_against_data`), so that is a programming error.
    """
    if not 0.0 < train_val_frac < 1.0:
        raise ValueError(f"train_val_frac must be strictly between 0 and 1, got {train_val_frac}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not 2 <= subset_size <= n_total:
        raise ValueError(f"cannot split {subset_size} images drawn from {n_total} into training and validation images")
    n_train, _ = split_sizes(subset_size, train_val_frac)
    if n_train < batch_size:
        raise ValueError(f"{subset_size} images with train fraction {train_val_frac} leave {n_train} training images, "
                         f"fewer than one batch of {batch_size}")
    rng = np.random.default_rng(seed)
    drawn = rng.choice(n_total, size=subset_size, replace=False).astype(np.int64)
    return SubsetSplit(train_idx=drawn[:n_train].copy(), val_idx=drawn[n_train:].copy())


def subset_fingerprint(split: SubsetSplit, dataset: str, labels: np.ndarray) -> str:
    """The identity of the images a run trains and validates on, as recorded in results.json (``subset_fingerprint``):
    sha256 of the data set's name and size, the sorted training and validation indices, and the labels of those
    images (the full training set's ``labels``, indexed). Two runs with the same fingerprint drew the same subset
    and split, so their test accuracies can be compared seed by seed (``scripts/summarize.py``'s paired table)."""
    labels = np.asarray(labels)
    digest = hashlib.sha256(f"subset-v1|{dataset}|{labels.shape[0]}|".encode())
    for idx in (split.train_idx, split.val_idx):
        ordered = np.sort(np.asarray(idx, dtype=np.int64))
        digest.update(ordered.astype("<i8").tobytes())
        digest.update(labels[ordered].astype("<i8").tobytes())
        digest.update(b"|")
    return digest.hexdigest()
