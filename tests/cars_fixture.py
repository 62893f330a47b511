"""A tiny Stanford Cars folder in the real layout (the real data set cannot be downloaded in tests).

``make_fake_cars(root, nested=True)`` writes ``root/stanford_cars/`` (or ``root`` itself with ``nested=False``) with
``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat``, ``cars_test_annos_withlabels.mat``, ``cars_train/*.jpg``
and ``cars_test/*.jpg``. The ``.mat`` files use the devkit's variable names and MATLAB layout: ``class_names`` a 1x196
cell array of strings; ``annotations`` a 1xN struct array with 1x1 numeric ``bbox_x1, bbox_y1, bbox_x2, bbox_y2, class``
(1-based) and a char ``fname``. Images have odd sizes and one is greyscale, as in the real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NUM_CLASSES = 196
ANNOTATION_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
TRAIN_SIZES = ((37, 23), (80, 51), (64, 64), (120, 77), (50, 90))  # (width, height)
TEST_SIZES = ((41, 29), (99, 66), (70, 70))
TRAIN_CLASSES = (1, 196, 5, 1, 77)  # 1-based, as in the devkit
TEST_CLASSES = (196, 2, 5)


def write_jpeg(path: Path, width: int, height: int, seed: int, grey: bool = False) -> None:
    """A smooth random-colour JPEG (smooth so resizing is not dominated by JPEG noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    (image.convert("L") if grey else image).save(path, format="JPEG", quality=90)


def annotations(fnames: list[str], classes: tuple[int, ...], sizes: tuple[tuple[int, int], ...]) -> np.ndarray:
    """A 1xN MATLAB struct array in the devkit's layout (``scipy.io.savemat`` writes it as a struct)."""
    records = np.empty((1, len(fnames)), dtype=[(name, "O") for name in ANNOTATION_FIELDS])
    for i, (fname, label, (width, height)) in enumerate(zip(fnames, classes, sizes)):
        records[0, i] = (np.array([[1]], dtype=np.uint8), np.array([[2]], dtype=np.uint8),
                         np.array([[width - 1]], dtype=np.uint16), np.array([[height - 1]], dtype=np.uint16),
                         np.array([[label]], dtype=np.uint8), np.array([fname]))
    return records


def class_names(n: int = NUM_CLASSES) -> np.ndarray:
    cells = np.empty((1, n), dtype=object)
    for i in range(n):
        cells[0, i] = np.array([f"Make {i} Model {i % 7} {2000 + i % 13}"])
    return cells


def generated_split(n: int, n_classes: int, start: int = 0) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """(sizes, 1-based classes) of ``n`` images: odd sizes from 23 to 98 pixels, classes cycling over ``n_classes``
    classes spread over 1..196 (so the first and the last class both occur)."""
    sizes = tuple((23 + (start + 13 * i) % 76, 29 + (start + 29 * i) % 70) for i in range(n))
    labels = [1 + (i % n_classes) * (NUM_CLASSES - 1) // max(n_classes - 1, 1) for i in range(n)]
    return sizes, tuple(labels)


def make_fake_cars(root: Path, nested: bool = True, n_train: int | None = None, n_test: int | None = None,
                   n_classes: int = 4) -> Path:
    """Write the tiny folder and return the folder holding ``devkit/`` (``root/stanford_cars`` when ``nested``).

    By default the splits are ``TRAIN_SIZES``/``TRAIN_CLASSES`` and ``TEST_SIZES``/``TEST_CLASSES``; ``n_train`` /
    ``n_test`` generate larger splits over ``n_classes`` classes instead (for training runs end to end).
    """
    import scipy.io

    base = root / "stanford_cars" if nested else root
    for folder in ("devkit", "cars_train", "cars_test"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": class_names()})
    train_sizes, train_classes = (TRAIN_SIZES, TRAIN_CLASSES) if n_train is None else generated_split(n_train, n_classes)
    test_sizes, test_classes = (TEST_SIZES, TEST_CLASSES) if n_test is None else generated_split(n_test, n_classes, 5)
    for split, sizes, classes, mat in (("train", train_sizes, train_classes, base / "devkit" / "cars_train_annos.mat"),
                                       ("test", test_sizes, test_classes, base / "cars_test_annos_withlabels.mat")):
        fnames = [f"{i + 1:05d}.jpg" for i in range(len(sizes))]
        for i, (fname, (width, height)) in enumerate(zip(fnames, sizes)):
            seed = (0 if split == "train" else 1000) + i
            write_jpeg(base / f"cars_{split}" / fname, width, height, seed=seed, grey=(split, i) == ("train", 2))
        scipy.io.savemat(mat, {"annotations": annotations(fnames, classes, sizes)})
    return base
