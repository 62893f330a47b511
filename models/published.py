"""RepDistiller's published CIFAR-100 teachers and their test accuracy: the one table the project checks teachers against.

``scripts/fetch_pretrained_teachers.sh`` refuses a teacher that scores far below it, ``scripts/verify_teacher.py``
reports against it, and a student run warns when its teacher does (docs/teachers.md).
"""

from __future__ import annotations

# CIFAR-100 top-1 test accuracy (%) of the six published teachers, RepDistiller's table (Tian et al., ICLR 2020),
# in the order the fetch script installs them
PUBLISHED_CIFAR100_ACCURACY: dict[str, float] = {
    "wrn_40_2": 75.61,
    "resnet56": 72.34,
    "resnet110": 74.31,
    "resnet32x4": 79.42,
    "vgg13": 74.64,
    "ResNet50": 79.34,
}
LOW_ACCURACY_POINTS = 3.0  # more than this many points below the published accuracy is "far below"
NEAR_CHANCE_FACTOR = 5.0  # below this multiple of chance (5% for 100 classes) is "near chance"


def low_accuracy_problem(arch: str, acc: float, num_classes: int = 100) -> str | None:
    """Why a CIFAR-100 test accuracy ``acc`` (%) of a teacher of architecture ``arch`` is too low to distil from (words
    that follow "scores"), or None.

    Too low: near chance (below 5x chance), or, for a published architecture, more than LOW_ACCURACY_POINTS below
    RepDistiller's number for it.
    """
    chance = 100.0 / num_classes
    if acc < NEAR_CHANCE_FACTOR * chance:
        return f"{acc:.2f}% on the CIFAR-100 test set, near chance ({chance:g}% for {num_classes} classes)"
    published = PUBLISHED_CIFAR100_ACCURACY.get(arch)
    if published is not None and acc < published - LOW_ACCURACY_POINTS:
        return (f"{acc:.2f}% on the CIFAR-100 test set, {published - acc:.2f} points below RepDistiller's published "
                f"{published:.2f}% for {arch}")
    return None
