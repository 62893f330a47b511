#!/usr/bin/env python3
"""Write a data set this project loads as a ``cifar-100-python`` folder, so other code can read it.

    python scripts/export_cifar_format.py --dataset digits --out /tmp/parity/data

writes ``/tmp/parity/data/cifar-100-python/{train,test,meta}`` in the layout of the official
CIFAR-100 pickles: Python 2 style, protocol 2, every key and byte string written as a Python 2 ``str``
(``SHORT_BINSTRING``/``BINSTRING``), so ``pickle.load(f, encoding='bytes')`` returns ``bytes`` keys
(this project's reader) and ``encoding='latin1'`` returns ``str`` keys (torchvision's ``CIFAR100``).
The images are exactly the uint8 ``[N, 3, 32, 32]`` tensors that ``--dataset NAME`` feeds the models,
flattened to ``data`` uint8 ``[N, 3072]`` in CHW row-major order; ``fine_labels`` are the labels,
``coarse_labels`` are all 0.

The meta file lists 100 fine label names even for a data set with fewer classes (the unused ones are
named ``unused_NN``), because this project's reader requires the 100 CIFAR-100 names; labels keep
their values, so a model trained with ``--dataset cifar100`` on the export keeps its 100 outputs.

torchvision's ``CIFAR100`` md5-checks the files against the official archive, which an export never
matches: pass ``download=False`` and replace ``torchvision.datasets.cifar.check_integrity`` with a
file-exists check (see tests/test_parity.py), or use the md5s written to ``export_info.json``.

An existing ``cifar-100-python`` folder is never overwritten without ``--force``; the new folder is
written beside it under a temporary name and renamed into place, so a crash leaves no half export.
"""

from __future__ import annotations

try:  # the project itself, installed by `make venv`: without it, one sentence instead of a traceback
    import core  # noqa: F401
except ModuleNotFoundError as err:
    import sys

    print(f"error: this Python cannot import the project ({err}); run `make venv` and use .venv/bin/python, or run "
          "`pip install --no-deps -e .` in the repository root", file=sys.stderr)
    raise SystemExit(2) from None

import argparse
import hashlib
import json
import os
import pickle
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import fs
from core.errors import UserError, run_main
from dataset import DATASETS, ImageSet, load_dataset
from helper.options import OneLineParser, PathKind

ROOT = Path(__file__).resolve().parents[1]

CIFAR_FOLDER = "cifar-100-python"
CIFAR_CLASSES = 100
INFO_FILE = "export_info.json"
_MAX_BINSTRING = 2**31 - 1


class Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``bytes`` as Python 2 ``str``, as the official CIFAR pickles do.

    Python 3's pickler writes ``bytes`` at protocol 2 as a call to ``_codecs.encode``, which loads as
    ``bytes`` under every encoding; a Python 2 ``str`` (``SHORT_BINSTRING``/``BINSTRING``) loads as
    ``bytes`` under ``encoding='bytes'`` and as ``str`` under ``encoding='latin1'``. numpy globals are
    written under their ``numpy.core`` names, which numpy 1.x and 2.x both load.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file: Any) -> None:
        super().__init__(file, protocol=2)

    def save_py2_str(self, obj: bytes) -> None:
        size = len(obj)
        if size < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([size]) + obj)
        elif size <= _MAX_BINSTRING:
            self.write(pickle.BINSTRING + struct.pack("<i", size) + obj)
        else:
            raise ValueError(f"a byte string of {size} bytes does not fit a protocol-2 BINSTRING")
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", "") or ""
        if module.startswith("numpy._core."):
            legacy = "numpy.core." + module[len("numpy._core."):]
            self.write(pickle.GLOBAL + f"{legacy}\n{name or obj.__qualname__}\n".encode("ascii"))
            self.memoize(obj)
            return
        super().save_global(obj, name)


def dump_py2(obj: Any, path: Path) -> None:
    """Pickle ``obj`` to ``path`` the Python 2 way (see :class:`Py2Pickler`) and fsync it."""
    with open(path, "wb") as handle:
        Py2Pickler(handle).dump(obj)
        handle.flush()
        os.fsync(handle.fileno())


def split_blob(images: Any, labels: Any, batch_label: str, file_prefix: str) -> dict[bytes, Any]:
    """The dict of one CIFAR-100 split file: ``data`` uint8 [N, 3072] (CHW row-major), labels, file names."""
    data = np.ascontiguousarray(np.asarray(images, dtype=np.uint8)).reshape(len(images), 3 * 32 * 32)
    fine = [int(v) for v in np.asarray(labels).reshape(-1)]
    return {
        b"filenames": [f"{file_prefix}_{i:05d}.png".encode("ascii") for i in range(len(fine))],
        b"batch_label": batch_label.encode("ascii"),
        b"fine_labels": fine,
        b"coarse_labels": [0] * len(fine),
        b"data": data,
    }


def meta_blob(num_classes: int) -> dict[bytes, Any]:
    """The meta file: 100 fine label names (``class_NN`` used, ``unused_NN`` beyond ``num_classes``)."""
    fine_names = [f"class_{i:02d}" if i < num_classes else f"unused_{i:02d}" for i in range(CIFAR_CLASSES)]
    return {
        b"fine_label_names": [name.encode("ascii") for name in fine_names],
        b"coarse_label_names": [b"all"],
    }


def _check_split(name: str, split: ImageSet) -> None:
    images, labels = split.images, split.labels
    if images.dtype != torch.uint8:
        raise UserError(f"the {name} images are {images.dtype}, not uint8; export only data sets loaded by dataset.load_dataset")
    if tuple(images.shape[1:]) != (3, 32, 32):
        raise UserError(f"the {name} images have shape {tuple(images.shape)}, not [N, 3, 32, 32]; CIFAR-100 files hold 32x32 RGB")
    if labels.shape[0] != images.shape[0]:
        raise UserError(f"the {name} split has {labels.shape[0]} labels for {images.shape[0]} images")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= CIFAR_CLASSES):
        raise UserError(f"the {name} labels must lie in 0..{CIFAR_CLASSES - 1} to fit the CIFAR-100 format")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def export_cifar_format(train: ImageSet, test: ImageSet, out: str | Path, source: str, force: bool = False) -> Path:
    """Write ``out/cifar-100-python/{train,test,meta}`` (plus ``export_info.json``); return that folder.

    Refuses (``UserError``) to replace an existing folder unless ``force``. The files are written into a
    temporary sibling folder and renamed into place.
    """
    _check_split("train", train)
    _check_split("test", test)
    if max(train.num_classes, test.num_classes) > CIFAR_CLASSES:
        raise UserError(f"'{source}' has {max(train.num_classes, test.num_classes)} classes; the CIFAR-100 format holds at most 100")
    out = Path(out).expanduser()
    target = out / CIFAR_FOLDER
    if target.exists() and not force:
        raise UserError(f"{target} already exists; pass --force to replace it or choose another --out")
    with fs.removing_new_folders(out), fs.checked(None, "write", location="--out", within=out):
        fs.make_folder(out, location="--out")
        return _write_folder(train, test, out, target, source)


def _write_folder(train: ImageSet, test: ImageSet, out: Path, target: Path, source: str) -> Path:
    scratch = Path(tempfile.mkdtemp(prefix=f".{CIFAR_FOLDER}.tmp-", dir=out))
    try:
        files = {
            "train": split_blob(train.images.numpy(), train.labels.numpy(), "training batch 1 of 1", f"{source}_train"),
            "test": split_blob(test.images.numpy(), test.labels.numpy(), "testing batch 1 of 1", f"{source}_test"),
            "meta": meta_blob(train.num_classes),
        }
        for name, blob in files.items():
            dump_py2(blob, scratch / name)
        info = {
            "source": source,
            "num_classes": train.num_classes,
            "n_train": len(train),
            "n_test": len(test),
            "mean": list(train.mean),
            "std": list(train.std),
            "md5": {name: _md5(scratch / name) for name in files},
        }
        (scratch / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        os.chmod(scratch, 0o755)
        old = None
        if target.exists():  # --force: move the old folder aside, put it back if the swap fails
            old = Path(tempfile.mkdtemp(prefix=f".{CIFAR_FOLDER}.old-", dir=out))
            os.replace(target, old / CIFAR_FOLDER)
        try:
            os.replace(scratch, target)
        except OSError:
            if old is not None:
                os.replace(old / CIFAR_FOLDER, target)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="export_cifar_format.py",
                           description="Write a data set of this project as a cifar-100-python folder.")
    parser.add_argument("--dataset", choices=DATASETS, default="digits", help="data set to export (as --dataset feeds the models)")
    parser.add_argument("--data_folder", type=PathKind("folder", "--data_folder"), default="./data",
                        help="where --dataset cifar100 is read from")
    parser.add_argument("--out", type=PathKind("output", "--out"), required=True,
                        help="folder that receives cifar-100-python/ (pass it as --data_folder later)")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT/cifar-100-python")
    return parser


def main(argv: list[str] | None = None) -> Path:
    opt = build_parser().parse_args(argv)
    train, test = load_dataset(opt.dataset, opt.data_folder, download=False)
    target = export_cifar_format(train, test, opt.out, source=opt.dataset, force=opt.force)
    print(f"wrote {target} ({len(train)} train, {len(test)} test images, {train.num_classes} classes used of 100)", flush=True)
    return target


if __name__ == "__main__":
    run_main(main)
