"""CIFAR-100 from the ``cifar-100-python`` pickles, read without torchvision's dataset class.

torchvision's ``CIFAR100`` md5-checks every file, which rejects the CIFAR-format files the tests
generate; this reader only checks the format (keys, shapes, label range). The pickles are read with a
restricted unpickler that only builds numpy arrays, so a tampered file cannot run code.

When the folder is missing the official archive is downloaded (URL and md5 overridable through the
``CIFAR100_URL`` / ``CIFAR100_MD5`` environment variables), verified, and extracted next to it.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import socket
import tempfile
import urllib.error
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import env, fs
from core.errors import DataNotFound, UserError

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_CLASSES = 100
DOWNLOAD_TIMEOUT_S = env.REGISTRY["CIFAR100_TIMEOUT"].default  # seconds; $CIFAR100_TIMEOUT overrides it


@dataclass
class ImageSet:
    """Images and labels of one split, kept on the CPU as uint8 (normalised later, on the device)."""

    images: torch.Tensor  # uint8 [N, 3, S, S]: S = 32 for CIFAR and digits, 64 for Stanford Cars
    labels: torch.Tensor  # int64 [N]
    num_classes: int
    mean: tuple[float, float, float]  # per-channel mean in [0, 1] units
    std: tuple[float, float, float]  # per-channel std in [0, 1] units
    crop_size: int = 32  # model input size: random crop for training, centre crop (when S > crop_size) otherwise
    crop_padding: int = 4  # zero padding of the training crop (RandomCrop(32, padding=4) for CIFAR)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# (module, name) pairs a CIFAR pickle needs: numpy array reconstruction and byte strings.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _read_pickle(path: Path) -> Any:
    redo = f"delete {path.parent} and download CIFAR-100 again"
    if fs.kind_of(path) is None:
        raise UserError(f"{path} is missing from the CIFAR-100 folder; {redo}")
    fs.require_regular_file(path, "the CIFAR-100 file")
    try:
        with fs.checked(path, "read", location="data folder"), open(path, "rb") as handle:
            return _ArrayOnlyUnpickler(handle, encoding="bytes").load()
    except UserError:  # an OSError of the file: its own sentence, not "truncated"
        raise
    except Exception as err:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, ValueError, ...)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path} is truncated or not a CIFAR-100 pickle ({first}); {redo}") from err


def _read_split(path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    redo = f"delete {path.parent} and download CIFAR-100 again"
    blob = _read_pickle(path)
    if not isinstance(blob, dict) or b"data" not in blob or b"fine_labels" not in blob:
        raise UserError(f"{path} is not a CIFAR-100 split (expected a dict with b'data' and b'fine_labels'); {redo}")
    data = blob[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise UserError(f"{path} holds data of shape {shape} and type {dtype}, expected uint8 [N, 3072]; {redo}")
    try:
        labels = np.asarray(blob[b"fine_labels"], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path} has non-integer fine labels; {redo}") from err
    if labels.shape != (data.shape[0],):
        raise UserError(f"{path} has {labels.size} fine labels for {data.shape[0]} images; {redo}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path} has fine labels outside 0..{num_classes - 1}; {redo}")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.copy())


def _num_classes(meta_path: Path) -> int:
    meta = _read_pickle(meta_path)
    names = meta.get(b"fine_label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != CIFAR100_CLASSES:
        raise UserError(
            f"{meta_path} does not list the {CIFAR100_CLASSES} CIFAR-100 fine label names; "
            f"delete {meta_path.parent} and download CIFAR-100 again"
        )
    return len(names)


def _cifar_dir(data_folder: Path) -> Path:
    """``data_folder/cifar-100-python``, or ``data_folder`` itself when it already is that folder."""
    if data_folder.name == CIFAR100_FOLDER or (data_folder / "train").is_file():
        return data_folder
    return data_folder / CIFAR100_FOLDER


def cifar100_present(data_folder: str | Path) -> bool:
    """Whether ``data_folder`` holds the extracted CIFAR-100 files (their contents are checked when they are read)."""
    folder = _cifar_dir(Path(data_folder).expanduser())
    return all((folder / name).is_file() for name in ("meta", "train", "test"))


def _md5(path: Path) -> str:
    from torchvision.datasets.utils import calculate_md5

    return calculate_md5(str(path))


def _extract_into(archive: Path, data_folder: Path, target: Path) -> None:
    """Extract ``archive`` into a private temporary folder, then move its cifar-100-python into place."""
    from torchvision.datasets.utils import extract_archive

    scratch = Path(tempfile.mkdtemp(prefix=".cifar100-extract-", dir=data_folder))
    try:
        extract_archive(str(archive), str(scratch))
        _move_extracted(scratch, target, archive)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _move_extracted(scratch: Path, target: Path, archive: Path) -> None:
    extracted = scratch / CIFAR100_FOLDER
    if not extracted.is_dir():
        raise UserError(f"{archive} does not contain a {CIFAR100_FOLDER} folder; download the official CIFAR-100 python archive")
    try:
        os.replace(extracted, target)
    except OSError:
        if not target.is_dir():  # another process may have finished first; otherwise the move really failed
            raise


def download_cifar100(data_folder: str | Path) -> Path:
    """Download, verify and extract CIFAR-100 into ``data_folder``; return the cifar-100-python folder.

    An existing ``cifar-100-python.tar.gz`` with the right md5 is extracted without downloading. A download
    goes to a temporary name first, so an interrupted or corrupt download never leaves a file behind. The download
    holds a lock (``data_folder/.cifar-100-python.lock``), so processes that need the data at once (several sweep
    runs or W&B agents) download it once: one downloads, the others wait and then read its folder.
    """

    data_folder = Path(data_folder)
    target = data_folder / CIFAR100_FOLDER
    url = env.get("CIFAR100_URL") or CIFAR100_URL
    md5 = env.get("CIFAR100_MD5") or CIFAR100_MD5
    timeout = env.get("CIFAR100_TIMEOUT")
    how_to = f"download {CIFAR100_ARCHIVE} from {CIFAR100_URL} and extract it into {data_folder}"
    created = [p for p in (data_folder, *data_folder.parents) if not p.exists()]  # innermost first
    try:
        with _download_lock(data_folder, how_to):
            if target.is_dir():  # another process downloaded it while this one waited
                return target
            return _download_into(data_folder, target, url, md5, timeout, how_to)
    except BaseException:
        _remove_empty(created)  # a failed download leaves no empty data folder behind
        raise


@contextmanager
def _download_lock(data_folder: Path, how_to: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``data_folder/.cifar-100-python.lock`` (creating the folder).

    The holder removes the lock file before it lets go, so nothing is left behind; a process that was waiting on the
    removed file locks the one that is there now instead (or finds the data downloaded).
    """
    lock_path = data_folder / f".{CIFAR100_FOLDER}.lock"
    waited = False
    while True:
        try:
            data_folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise DataNotFound(f"{fs.os_error_message(err, data_folder, 'create the data folder')}; "
                               f"{how_to}") from err
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    print(f"waiting for another process to finish downloading CIFAR-100 into {data_folder}", flush=True)
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(lock_path))
            except FileNotFoundError:
                current = False
            if not current:  # the previous holder removed this file on its way out: lock the current one
                continue
            try:
                yield
            finally:
                lock_path.unlink(missing_ok=True)
            return
        finally:
            os.close(fd)


def _remove_empty(folders: list[Path]) -> None:
    """rmdir ``folders`` (innermost first) that this download created and left empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _download_into(data_folder: Path, target: Path, url: str, md5: str, timeout: float, how_to: str) -> Path:
    from torchvision.datasets.utils import download_and_extract_archive

    archive = data_folder / CIFAR100_ARCHIVE
    if archive.is_file():
        if _md5(archive) != md5:
            raise DataNotFound(
                f"{archive} exists but its md5 is not {md5} (an incomplete or different file); "
                f"delete it and rerun to download it again, or {how_to}"
            )
        _extract_into(archive, data_folder, target)
        return target

    part = data_folder / f".part-{uuid.uuid4().hex}-{CIFAR100_ARCHIVE}"  # keeps the .tar.gz suffix extract_archive needs
    scratch = Path(tempfile.mkdtemp(prefix=".cifar100-extract-", dir=data_folder))
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        try:
            download_and_extract_archive(url, download_root=str(data_folder), extract_root=str(scratch),
                                         filename=part.name, md5=md5)
        except RuntimeError as err:
            if part.is_file() and _md5(part) != md5:  # torchvision's md5 check failed
                raise DataNotFound(
                    f"CIFAR-100 is not in {target} and the file downloaded from {url} failed its md5 check "
                    f"(expected {md5}); {how_to}"
                ) from err
            raise DataNotFound(f"CIFAR-100 downloaded from {url} could not be extracted ({err}); {how_to}") from err
        except (urllib.error.URLError, OSError, ValueError) as err:
            if isinstance(err, OSError) and not isinstance(err, urllib.error.URLError) and fs.is_local_error(err):
                raise UserError(fs.os_error_message(err, err.filename or data_folder, "write",
                                                    location="data folder")) from err
            reason = getattr(err, "reason", None) or err
            raise DataNotFound(f"CIFAR-100 is not in {target} and could not be downloaded from {url} ({reason}); {how_to}") from err
        except Exception as err:  # tar/gzip errors of a broken archive
            raise DataNotFound(f"CIFAR-100 downloaded from {url} could not be extracted ({err}); {how_to}") from err
        _move_extracted(scratch, target, Path(url))
        if not archive.exists():
            os.replace(part, archive)  # keep the verified archive, as torchvision does
    finally:
        socket.setdefaulttimeout(previous_timeout)
        part.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def load_cifar100(data_folder: str | Path, download: bool = True) -> tuple[ImageSet, ImageSet]:
    """Read (train, test) CIFAR-100 from ``data_folder/cifar-100-python`` (downloading it when missing)."""
    with fs.checked(None, "read", location="data folder", within=data_folder):  # a folder nobody may search: its own sentence
        return _load_cifar100(Path(data_folder).expanduser(), download)


def _load_cifar100(data_folder: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    folder = _cifar_dir(data_folder)
    if not folder.is_dir():
        if not download:
            raise DataNotFound(
                f"CIFAR-100 is not in {folder}; download {CIFAR100_ARCHIVE} from {CIFAR100_URL} and extract it into "
                f"{data_folder}"
            )
        folder = download_cifar100(data_folder)
    num_classes = _num_classes(folder / "meta")
    train_images, train_labels = _read_split(folder / "train", num_classes)
    test_images, test_labels = _read_split(folder / "test", num_classes)
    sets = tuple(
        ImageSet(images=images, labels=labels, num_classes=num_classes, mean=CIFAR100_MEAN, std=CIFAR100_STD)
        for images, labels in ((train_images, train_labels), (test_images, test_labels))
    )
    return sets[0], sets[1]
