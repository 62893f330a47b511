"""``--dataset digits``: scikit-learn's bundled handwritten digits as a small, offline CIFAR stand-in.

1,797 real 8x8 grey images (values 0..16, 10 classes) are scaled to 0..255, resized to 32x32
(bilinear) and replicated to three channels. The test split is fixed: stratified, 20%, drawn with
seed 0 whatever ``--seed`` is, so every run is evaluated on the same images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dataset.cifar100 import ImageSet

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_CLASSES = 10


def _digits_images() -> tuple[torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) * (255.0 / 16.0))  # [N, 8, 8]
    big = F.interpolate(grey[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    images = big.round().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, np.asarray(bunch.target, dtype=np.int64)


def _stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    pixels = images.to(torch.float64).div_(255.0)
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3))
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))


def load_digits_dataset() -> tuple[ImageSet, ImageSet]:
    """(train, test) digits as uint8 [N, 3, 32, 32]; mean/std come from the training split."""
    from sklearn.model_selection import train_test_split

    images, labels = _digits_images()
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    mean, std = _stats(images[train_idx])
    sets = tuple(
        ImageSet(images=images[idx].contiguous(), labels=torch.from_numpy(labels[idx].copy()),
                 num_classes=DIGITS_CLASSES, mean=mean, std=std)
        for idx in (train_idx, test_idx)
    )
    return sets[0], sets[1]
