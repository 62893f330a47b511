"""Generated CIFAR-100-format data for tests (the real data set cannot be downloaded in tests).

``make_fake_cifar100(root)`` writes ``root/cifar-100-python/{train,test,meta}`` as the official pickles
are laid out and returns ``root``, the folder to pass as ``data_folder`` / ``--data_folder``.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

NUM_CLASSES = 100
FOLDER = "cifar-100-python"
ARCHIVE = "cifar-100-python.tar.gz"


def _split(rng: np.random.Generator, n: int, name: str) -> dict[bytes, object]:
    fine = rng.permutation(np.arange(n) % NUM_CLASSES)  # every class present once n >= 100
    data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
    return {
        b"filenames": [f"fake_{name}_{i:05d}.png".encode() for i in range(n)],
        b"batch_label": f"{name} batch (generated for tests)".encode(),
        b"fine_labels": [int(v) for v in fine],
        b"coarse_labels": [int(v) // 5 for v in fine],
        b"data": data,
    }


def _meta() -> dict[bytes, object]:
    return {
        b"fine_label_names": [f"class_{i:02d}".encode() for i in range(NUM_CLASSES)],
        b"coarse_label_names": [f"superclass_{i:02d}".encode() for i in range(NUM_CLASSES // 5)],
    }


def make_fake_cifar100(root: Path, n_train: int = 500, n_test: int = 100, seed: int = 0) -> Path:
    """Write a CIFAR-100-format ``root/cifar-100-python`` folder with random images; return ``root``.

    Labels cycle over the 100 classes (shuffled), images are uniform random uint8, all from ``seed``.
    """
    root = Path(root)
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, blob in (("train", _split(rng, n_train, "training")), ("test", _split(rng, n_test, "testing")), ("meta", _meta())):
        with open(folder / name, "wb") as handle:
            pickle.dump(blob, handle, protocol=2)
    return root


def make_fake_cifar100_archive(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> tuple[Path, str]:
    """Write ``root/cifar-100-python.tar.gz`` holding a fake ``cifar-100-python`` folder; return (path, md5)."""
    root = Path(root)
    source = make_fake_cifar100(root / "archive_source", n_train=n_train, n_test=n_test, seed=seed)
    archive = root / ARCHIVE
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source / FOLDER, arcname=FOLDER)
    archive.write_bytes(buffer.getvalue())
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()
