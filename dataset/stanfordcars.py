"""Stanford Cars (196 classes, 8,144 train / 8,041 test images) in the layout torchvision's ``StanfordCars`` reads.

``data_folder`` (or ``data_folder/stanford_cars``, where torchvision expects it) holds ``devkit/cars_meta.mat``,
``devkit/cars_train_annos.mat``, ``cars_test_annos_withlabels.mat``, ``cars_train/`` and ``cars_test/``. Nothing is
downloaded: the original URL is gone, the files come from the original devkit or a Kaggle mirror.

The published CKD code resizes every image to 64x64 (``Resize((64, 64))`` on the PIL image: bilinear, Pillow's
antialiasing), crops 56x56 (random for training, centre otherwise) and normalises with the ImageNet mean/std. The
first load decodes and resizes every image once, in threads (Pillow releases the GIL while it decodes and resizes),
into one uint8 tensor file, ``stanfordcars_64.pt`` next to the data; later loads read that file back in seconds and
rebuild it when a ``.mat`` file's contents or an image's name, size or modification time change. The crop is left to
:class:`~dataset.augment.DeviceAugment` (``crop_size`` 56, ``crop_padding`` 0 in the returned sets).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import fs
from core.errors import DataNotFound, UserError
from dataset.cifar100 import ImageSet

CARS_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as in the published code
CARS_STD = (0.229, 0.224, 0.225)
CARS_CLASSES = 196
CARS_FOLDER = "stanford_cars"  # torchvision unpacks into root/stanford_cars
STORED_SIZE = 64  # Resize((64, 64))
CROP_SIZE = 56  # RandomCrop(56) for training, CenterCrop(56) otherwise
CACHE_NAME = f"stanfordcars_{STORED_SIZE}.pt"
CACHE_VERSION = 1
DECODE_CHUNK = 32  # images per thread task

META_MAT = Path("devkit") / "cars_meta.mat"
TRAIN_MAT = Path("devkit") / "cars_train_annos.mat"
TEST_MAT = Path("cars_test_annos_withlabels.mat")
TRAIN_DIR = "cars_train"
TEST_DIR = "cars_test"


def _where_to_get(root: Path) -> str:
    return (f"Stanford Cars must sit in {root} as devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
            "cars_test_annos_withlabels.mat, cars_train/ and cars_test/ (the layout of torchvision's StanfordCars); "
            "copy them there from a Kaggle mirror of Stanford Cars or the original devkit")


def cars_root(data_folder: str | Path) -> Path:
    """The folder that holds (or should hold) ``devkit/``: ``data_folder`` itself or ``data_folder/stanford_cars``."""
    data_folder = Path(data_folder).expanduser()
    nested = data_folder / CARS_FOLDER
    for candidate in (data_folder, nested):
        if (candidate / "devkit").is_dir():
            return candidate
    if nested.is_dir():
        return nested
    flat = any((data_folder / name).exists() for name in (TRAIN_DIR, TEST_DIR, TEST_MAT.name))
    return data_folder if flat else nested


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _load_mat(path: Path, key: str, root: Path) -> np.ndarray:
    if fs.kind_of(path) is None:
        raise DataNotFound(f"{path} is missing; {_where_to_get(root)}")
    fs.require_regular_file(path)
    import scipy.io

    try:
        with fs.checked(path, "read", location="data folder"):
            contents = scipy.io.loadmat(str(path))
    except UserError:
        raise
    except Exception as err:  # a damaged .mat fails in many ways (ValueError, MatReadError, TypeError, zlib.error, ...)
        raise UserError(f"{path} is not a readable MATLAB file ({_first_line(err)}); replace it with the original from a "
                        "Kaggle mirror of Stanford Cars or the original devkit") from err
    if key not in contents:
        raise UserError(f"{path} has no '{key}' variable, so it is not the Stanford Cars file of that name; replace it with "
                        "the original from a Kaggle mirror of Stanford Cars or the original devkit")
    return np.asarray(contents[key])


def _scalar(value: Any) -> Any:
    """The one element of a MATLAB 1x1 array or 1-element char array; raises ValueError otherwise."""
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise ValueError(f"expected one value, got {flat.size}")
    return flat[0].item() if isinstance(flat[0], np.generic) else flat[0]


def _read_class_names(path: Path, root: Path) -> list[str]:
    try:
        names = [str(_scalar(cell)) for cell in _load_mat(path, "class_names", root).reshape(-1)]
    except ValueError as err:
        raise UserError(f"{path} has a malformed 'class_names' cell array ({err}); replace it with the original devkit file") from err
    if len(names) != CARS_CLASSES:
        raise UserError(f"{path} lists {len(names)} class names, expected the {CARS_CLASSES} Stanford Cars classes; "
                        "replace it with the original devkit file")
    return names


def _read_annotations(path: Path, images_dir: Path, root: Path) -> tuple[list[Path], np.ndarray]:
    """Image paths and 0-based labels, in the order of the ``annotations`` struct array (torchvision's order)."""
    redo = "replace it with the original from a Kaggle mirror of Stanford Cars or the original devkit"
    records = _load_mat(path, "annotations", root).reshape(-1)
    fields = records.dtype.names or ()
    if "class" not in fields or "fname" not in fields:
        raise UserError(f"{path} holds no 'annotations' struct array with 'class' and 'fname' fields; {redo}")
    if records.size == 0:
        raise UserError(f"{path} annotates no images; {redo}")
    files: list[Path] = []
    labels = np.empty(records.size, dtype=np.int64)
    for i, record in enumerate(records):
        try:
            fname = str(_scalar(record["fname"]))
            label = int(_scalar(record["class"]))
        except (TypeError, ValueError) as err:
            raise UserError(f"{path} has a malformed annotation {i + 1} ({err}); {redo}") from err
        if not fname or Path(fname).name != fname:
            raise UserError(f"{path} names the image '{fname}' in annotation {i + 1}, not a plain file name; {redo}")
        if not 1 <= label <= CARS_CLASSES:
            raise UserError(f"{path} gives annotation {i + 1} the class {label}, outside 1..{CARS_CLASSES}; {redo}")
        files.append(images_dir / fname)
        labels[i] = label - 1  # the devkit counts classes from 1
    return files, labels


def _fingerprint(mat_paths: Sequence[Path], image_paths: Sequence[Path], root: Path) -> str:
    """sha256 over the cache format, the .mat files' contents and every image's name, size and modification time."""
    digest = hashlib.sha256(f"stanfordcars v{CACHE_VERSION} size {STORED_SIZE}\n".encode())
    for path in mat_paths:
        digest.update(f"{path.relative_to(root)}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for path in image_paths:
        try:
            stat = path.stat()
        except FileNotFoundError as err:
            raise DataNotFound(f"the image {path} is missing; {_where_to_get(root)}") from err
        digest.update(f"{path.relative_to(root)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode_image(path: Path, size: int) -> np.ndarray:
    """uint8 [3, size, size]: ``Image.open(path).convert("RGB")`` resized bilinearly, as ``Resize((size, size))`` does."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            small = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except FileNotFoundError as err:
        raise UserError(f"the image {path} is missing; copy it back from a Kaggle mirror of Stanford Cars or the original data") from err
    except OSError as err:
        if err.errno is not None:  # a file the operating system refuses (PIL's own decoding errors carry no errno)
            raise UserError(fs.os_error_message(err, path, "read", location="data folder")) from err
        raise UserError(f"the image {path} cannot be decoded ({_first_line(err)}); replace it with the original from a "
                        "Kaggle mirror of Stanford Cars or the original data") from err
    except Exception as err:  # UnidentifiedImageError, truncated files, decoder errors, decompression bombs
        raise UserError(f"the image {path} cannot be decoded ({_first_line(err)}); replace it with the original from a "
                        "Kaggle mirror of Stanford Cars or the original data") from err
    return np.array(small, dtype=np.uint8).transpose(2, 0, 1)


def _default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 32))


def decode_images(paths: Sequence[Path], size: int = STORED_SIZE, workers: int | None = None, desc: str = "decoding",
                  progress: bool = True) -> torch.Tensor:
    """Decode and resize ``paths`` in parallel threads into uint8 [N, 3, size, size], with a tqdm progress bar on a
    terminal (never in a log file: stderr keeps to the one-line error of a bad image)."""
    from PIL import Image
    from tqdm import tqdm

    Image.init()  # register every format plugin now: Pillow's lazy registration is not thread-safe
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    decode: Callable[[Path, int], np.ndarray] = _decode_image

    def work(start: int) -> int:
        stop = min(start + DECODE_CHUNK, len(paths))
        for i in range(start, stop):
            out[i] = decode(paths[i], size)
        return stop - start

    with ThreadPoolExecutor(max_workers=workers or _default_workers()) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", disable=not (progress and sys.stderr.isatty())) as bar:
        futures = [pool.submit(work, start) for start in range(0, len(paths), DECODE_CHUNK)]
        try:
            for future in as_completed(futures):
                bar.update(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return torch.from_numpy(out)


def _save_atomic(blob: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file in ``path``'s folder, fsync it, then rename it over ``path``."""
    handle_fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle_fd, "wb") as handle:
            torch.save(blob, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _read_cache(path: Path, fingerprint: str, n_train: int, n_test: int) -> dict[str, Any] | None:
    """The cache's contents when it exists, loads and matches ``fingerprint`` and the split sizes; otherwise None."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated or foreign file: rebuild it
        return None
    if not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION or blob.get("fingerprint") != fingerprint:
        return None
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = blob.get(f"{split}_images"), blob.get(f"{split}_labels")
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.shape != (n, 3, STORED_SIZE, STORED_SIZE):
            return None
        if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
            return None
    return blob


def load_stanfordcars(data_folder: str | Path, workers: int | None = None, progress: bool = True) -> tuple[ImageSet, ImageSet]:
    """Read (train, test) Stanford Cars as uint8 [N, 3, 64, 64] with 0-based labels, through the tensor cache.

    The cache ``stanfordcars_64.pt`` goes next to ``devkit/``; when that folder is read-only the images are decoded
    on every run (with a warning). A missing, unreadable or malformed file raises :class:`UserError` before
    anything is written.
    """
    with fs.checked(None, "read", location="data folder", within=data_folder):  # a folder nobody may search: its own sentence
        return _load_stanfordcars(data_folder, workers, progress)


def _load_stanfordcars(data_folder: str | Path, workers: int | None, progress: bool) -> tuple[ImageSet, ImageSet]:
    root = cars_root(data_folder)
    meta_mat, train_mat, test_mat = root / META_MAT, root / TRAIN_MAT, root / TEST_MAT
    class_names = _read_class_names(meta_mat, root)
    train_files, train_labels = _read_annotations(train_mat, root / TRAIN_DIR, root)
    test_files, test_labels = _read_annotations(test_mat, root / TEST_DIR, root)
    fingerprint = _fingerprint((meta_mat, train_mat, test_mat), [*train_files, *test_files], root)

    cache = root / CACHE_NAME
    blob = _read_cache(cache, fingerprint, len(train_files), len(test_files))
    if blob is None:
        if progress:
            print(f"decoding {len(train_files) + len(test_files)} Stanford Cars images once into {cache} (later runs read "
                  "that file back)", flush=True)
        blob = {
            "version": CACHE_VERSION,
            "fingerprint": fingerprint,
            "class_names": class_names,
            "train_images": decode_images(train_files, workers=workers, desc="Stanford Cars train", progress=progress),
            "train_labels": torch.from_numpy(train_labels),
            "test_images": decode_images(test_files, workers=workers, desc="Stanford Cars test", progress=progress),
            "test_labels": torch.from_numpy(test_labels),
        }
        try:
            _save_atomic(blob, cache)
        except OSError as err:
            warnings.warn(f"{fs.os_error_message(err, cache, 'write the decoded Stanford Cars images to')}; "
                          "they will be decoded again next run", stacklevel=2)
    sets = tuple(
        ImageSet(images=blob[f"{split}_images"], labels=blob[f"{split}_labels"].to(torch.int64), num_classes=CARS_CLASSES,
                 mean=CARS_MEAN, std=CARS_STD, crop_size=CROP_SIZE, crop_padding=0)
        for split in ("train", "test")
    )
    return sets[0], sets[1]
