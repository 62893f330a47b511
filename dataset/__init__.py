"""Data for the few-teacher-inference setting: data sets (CIFAR-100, digits, Stanford Cars), the subset split,
device augmentation, the one-time teacher cache and the resumable index samplers."""

from __future__ import annotations

from pathlib import Path

from dataset.augment import DeviceAugment, crop_flip, draw_crop_params, random_views
from dataset.cifar100 import CIFAR100_MD5, CIFAR100_MEAN, CIFAR100_STD, CIFAR100_URL, ImageSet, download_cifar100, load_cifar100
from dataset.digits import load_digits_dataset
from dataset.samplers import ClassBalancedSampler, CRDSampler, PlainSampler, TupleSampler, steps_per_epoch
from dataset.stanfordcars import CARS_CLASSES, CARS_MEAN, CARS_STD, load_stanfordcars
from dataset.subset import SubsetSplit, make_subset_split, min_subset_size, split_sizes, subset_fingerprint
from dataset.teacher_cache import CountingModule, TrainPool, build_train_pool

DATASETS = ("cifar100", "digits", "stanfordcars")


def load_dataset(name: str, data_folder: str | Path, download: bool = True) -> tuple[ImageSet, ImageSet]:
    """(train, test) of ``--dataset name``: ``cifar100`` from ``data_folder`` (downloaded when missing), ``digits``, or
    ``stanfordcars`` from ``data_folder`` or ``data_folder/stanford_cars`` (never downloaded: the original URL is gone)."""
    if name == "cifar100":
        return load_cifar100(data_folder, download=download)
    if name == "digits":
        return load_digits_dataset()
    if name == "stanfordcars":
        return load_stanfordcars(data_folder)
    raise ValueError(f"unknown data set '{name}'; use one of {', '.join(DATASETS)}")


__all__ = [
    "CARS_CLASSES",
    "CARS_MEAN",
    "CARS_STD",
    "CIFAR100_MD5",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR100_URL",
    "DATASETS",
    "CRDSampler",
    "ClassBalancedSampler",
    "CountingModule",
    "DeviceAugment",
    "ImageSet",
    "PlainSampler",
    "SubsetSplit",
    "TrainPool",
    "TupleSampler",
    "build_train_pool",
    "crop_flip",
    "download_cifar100",
    "draw_crop_params",
    "load_cifar100",
    "load_dataset",
    "load_digits_dataset",
    "load_stanfordcars",
    "make_subset_split",
    "min_subset_size",
    "random_views",
    "split_sizes",
    "steps_per_epoch",
    "subset_fingerprint",
]
