#!/usr/bin/env python3
"""Check a teacher checkpoint: its digest, its loading and its CIFAR-100 test accuracy, and say which were checked.

    python scripts/verify_teacher.py resnet110 save/models/resnet110_vanilla/ckpt_epoch_240.pth --data_folder ./data

Prints one status line with three facts, each either checked or said to be unchecked:

- digest: the file's SHA-256 against the lock file ``teachers.lock`` of its models folder (written by
  ``scripts/fetch_pretrained_teachers.sh`` when it installs a teacher), else against the pin of the published file
  (``scripts/teachers.sha256``); a file in neither is "not checked";
- loading: ``torch.load(weights_only=True)`` (a pickle that would import or call code is refused, never run), then a
  strict load (keys and shapes) into ``model_dict[NAME](num_classes=100)``, and finite weights;
- accuracy: measured now on the CIFAR-100 test set when ``--data_folder`` holds ``cifar-100-python/`` (never
  downloaded here), compared with RepDistiller's published table (``models/published.py``); otherwise "not measured",
  with the command that measures it. Figures stored in the checkpoint are printed as such, never as measured ones.

Exit 0 when every check made passed; one sentence on stderr and exit 2 when one failed (a lock or pin that differs,
a file that does not load, an accuracy near chance or more than 3 points below the published one).

This module also holds the checks ``scripts/fetch_teachers.py`` makes before it installs a teacher.
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
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from core import fs
from core.errors import UserError, run_main
from helper.options import OneLineParser, PathKind
from models.published import PUBLISHED_CIFAR100_ACCURACY, low_accuracy_problem

NUM_CLASSES = 100
TEACHERS = tuple(PUBLISHED_CIFAR100_ACCURACY)
CHECKPOINT = "ckpt_epoch_240.pth"
PINS = Path(__file__).resolve().parent / "teachers.sha256"
PINS_NAME = "scripts/teachers.sha256"
LOCK_NAME = "teachers.lock"
CIFAR100_FOLDER = "cifar-100-python"
_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


def teacher_file(name: str) -> str:
    """A published teacher's path inside a models folder (and the lock file's key): ``{name}_vanilla/ckpt_epoch_240.pth``."""
    return f"{name}_vanilla/{CHECKPOINT}"


def read_digest_lines(path: Path, what: str) -> dict[str, str]:
    """File name -> lower-case SHA-256 of each ``DIGEST  FILE`` line of a sha256sum-format file (comments and blank
    lines skipped; the first line of a file wins). A line of any other shape is refused: one sentence naming it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(fs.os_error_message(err, path, f"read the {what}")) from err
    except UnicodeDecodeError as err:
        raise UserError(f"cannot read {what} {path} ({err}); pass a file written by sha256sum") from err
    found: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.fullmatch(line.strip())
        if match is None:
            raise UserError(f"line {number} of {what} {path} is not 'SHA256  FILE' as sha256sum writes it "
                            f"({line.strip()[:60]!r}); fix or remove that line")
        found.setdefault(match[2].strip(), match[1].lower())
    return found


def read_sha256_list(path: Path, what: str = "the sha256 list") -> dict[str, str]:
    """Teacher name -> SHA-256 from a sha256sum-format file.

    A line counts for teacher NAME when its file name is NAME, NAME.pth, or ends with ``NAME_vanilla/ckpt_epoch_240.pth``
    (so ``cifar_teachers/...``, ``models/...`` and ``save/models/...`` all work); the first such line wins.
    """
    found: dict[str, str] = {}
    for file, digest in read_digest_lines(path, what).items():
        for name in TEACHERS:
            want = teacher_file(name)
            if file in (name, f"{name}.pth", want) or file.endswith("/" + want):
                found.setdefault(name, digest)
    return found


def read_pins() -> dict[str, str]:
    """The digests this repository pins (scripts/teachers.sha256), by teacher name."""
    return read_sha256_list(PINS, PINS_NAME) if PINS.is_file() else {}


def read_lock(models: Path) -> dict[str, str]:
    """``{name}_vanilla/ckpt_epoch_240.pth`` -> SHA-256 recorded in ``models/teachers.lock`` (empty when there is none)."""
    lock = models / LOCK_NAME
    if not lock.exists():
        return {}
    if not lock.is_file():
        raise UserError(f"{lock} is not a file; move it away, the fetch script writes its lock file there")
    return read_digest_lines(lock, "the lock file")


def record_in_lock(models: Path, key: str, digest: str) -> Path:
    """Write (or replace) the line of ``key`` in ``models/teachers.lock``, atomically; return the lock's path."""
    from core.checkpoint import atomic_write_bytes

    lock = models / LOCK_NAME
    entries = read_lock(models)
    entries[key] = digest
    header = ("# SHA-256 of each teacher scripts/fetch_pretrained_teachers.sh installed here, recorded at its first "
              "install;\n# later fetches and scripts/verify_teacher.py check it (sha256sum -c teachers.lock, run in "
              "this folder, too)\n")
    text = header + "".join(f"{value}  {file}\n" for file, value in sorted(entries.items()))
    try:
        atomic_write_bytes(lock, text.encode("utf-8"))
    except OSError as err:
        raise UserError(fs.os_error_message(err, lock, "write", location="--save_dir")) from err
    return lock


def check_loading(name: str, path: Path, num_classes: int = NUM_CLASSES) -> str:
    """Weights-only load, strict load into ``name``, finite weights; return what the checkpoint stores about itself
    (``stored in the checkpoint: epoch 240, accuracy 72.34``, or ''). Raises UserError with the reason otherwise."""
    import torch

    from core.checkpoint import extract_state_dict, load_weights_strict, safe_load
    from models import model_dict

    if name not in model_dict:
        raise UserError(f"unknown architecture '{name}'; choose one of {', '.join(model_dict)}")
    try:
        checkpoint = safe_load(path)
    except UserError:
        raise
    except Exception as err:  # e.g. struct.error from a few-byte file: still a bad file, never a traceback
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    state_dict = extract_state_dict(checkpoint, path)
    model = model_dict[name](num_classes=num_classes)
    try:
        load_weights_strict(model, state_dict, name, path)
    except UserError as err:  # its advice is for --model_t: keep the reason only
        raise UserError(str(err).split("); pass the checkpoint")[0] + ")") from err
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{path} holds non-finite weights (first: {bad[0]})")
    details = []
    if isinstance(checkpoint, dict):
        for key in ("epoch", "accuracy", "best_acc"):
            value = checkpoint.get(key)
            if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
                details.append(f"{key} {float(value):g}")
    return f"stored in the checkpoint: {', '.join(details)}" if details else ""


def verify(name: str, path: Path, num_classes: int = NUM_CLASSES) -> str:
    """:func:`check_loading` as one line: ``ok: PATH holds a valid NAME with 100 classes (stored in the checkpoint: ...)``."""
    stored = check_loading(name, path, num_classes)
    return f"ok: {path} holds a valid {name} with {num_classes} classes" + (f" ({stored})" if stored else "")


LOADING_CHECKED = "loading checked (weights-only, strict, {name} with 100 classes)"


def cifar_test_folder(data_folder: Path) -> Path | None:
    """The ``cifar-100-python`` folder of ``data_folder`` (or ``data_folder`` itself) when it holds the test set."""
    for folder in (data_folder / CIFAR100_FOLDER, data_folder):
        if folder.name == CIFAR100_FOLDER and (folder / "test").is_file():
            return folder
    return None


def load_test_set(data_folder: Path):  # -> dataset.cifar100.ImageSet
    """The CIFAR-100 test set of ``data_folder`` (never downloaded here)."""
    from dataset.cifar100 import load_cifar100

    return load_cifar100(data_folder, download=False)[1]


def measure_accuracy(name: str, path: Path, test, device: str = "auto") -> float:
    """CIFAR-100 test top-1 accuracy (%) of the checkpoint at ``path`` (already checked), as the trainers evaluate it."""
    from core.checkpoint import extract_state_dict, safe_load
    from core.device import resolve_device
    from dataset.augment import DeviceAugment
    from helper.engine import evaluate
    from models import model_dict

    target = resolve_device(device)
    model = model_dict[name](num_classes=NUM_CLASSES)
    model.load_state_dict(extract_state_dict(safe_load(path), path), strict=True)
    model.to(target)
    augment = DeviceAugment.for_images(test, use_DA=0, device=target)
    stats = evaluate(model, test.images.to(target), test.labels.to(target), augment.normalize_eval)
    return float(stats["acc"])


def accuracy_fact(name: str, acc: float) -> str:
    """The accuracy fact of a measured teacher (its published figure beside it when there is one)."""
    published = PUBLISHED_CIFAR100_ACCURACY.get(name)
    beside = f", published {published:.2f}%" if published is not None else ", no published figure for this architecture"
    return f"accuracy measured now on the CIFAR-100 test set: {acc:.2f}%{beside}"


@dataclass
class Status:
    """The three facts of a teacher and what its checkpoint stores about itself: one status line."""

    digest: str
    loading: str
    accuracy: str
    stored: str = ""

    def line(self) -> str:
        return "; ".join(part for part in (self.digest, self.loading, self.accuracy, self.stored) if part)


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = OneLineParser(
        prog="verify_teacher.py", description="Check FILE as a NAME teacher (100 classes): digest, loading, CIFAR-100 test accuracy.")
    parser.add_argument("name", help="architecture, one of models.model_dict (e.g. resnet56)")
    parser.add_argument("file", type=PathKind("file", "FILE"), metavar="FILE", help="checkpoint to check")
    parser.add_argument("--data_folder", type=PathKind("folder", "--data_folder"), default=None,
                        help="folder holding cifar-100-python/: also measure the CIFAR-100 test accuracy (never downloaded here)")
    parser.add_argument("--device", default="auto", help="device of the accuracy check: auto, cpu, cuda, cuda:N or mps")
    return parser


def digest_fact(name: str, path: Path) -> str:
    """The digest fact of ``path``: against its models folder's lock file, else the published pin; raises UserError
    when one of them differs."""
    from core.checkpoint import file_sha256

    digest = file_sha256(path)
    lock = path.parent.parent / LOCK_NAME
    recorded = read_lock(path.parent.parent).get(f"{path.parent.name}/{path.name}")
    if recorded is not None:
        if recorded != digest:
            raise UserError(f"the sha256 of {path} is {digest}, not the {recorded} that {lock} recorded when it was "
                            "installed: the file changed since; fetch it again or restore it")
        return f"digest {digest[:12]}... equal to the one {lock} recorded at install"
    pin = read_pins().get(name)
    if pin is not None and pin == digest and path.name == CHECKPOINT:
        return f"digest {digest[:12]}... pinned and equal ({PINS_NAME})"
    return f"digest not checked (sha256 {digest}; no lock entry in {lock}, and not the pinned published file)"


def main(argv: list[str] | None = None) -> int:
    opt = build_parser().parse_args(argv)
    if opt.data_folder is not None or not opt.device.strip():  # checked with the flags, before the checkpoint is read
        from core.device import resolve_device

        resolve_device(opt.device)
    path: Path = opt.file
    digest = digest_fact(opt.name, path)
    stored = check_loading(opt.name, path)
    if opt.data_folder is not None and cifar_test_folder(opt.data_folder) is None:
        raise UserError(f"--data_folder {opt.data_folder} holds no {CIFAR100_FOLDER}/test; pass the folder holding "
                        f"{CIFAR100_FOLDER}/, or drop --data_folder to skip the accuracy check")
    if opt.data_folder is None:
        accuracy = (f"accuracy not measured; measure it with: python scripts/verify_teacher.py {opt.name} {path} "
                    "--data_folder DIR (DIR holding cifar-100-python/)")
    else:
        acc = measure_accuracy(opt.name, path, load_test_set(opt.data_folder), opt.device)
        problem = low_accuracy_problem(opt.name, acc)
        if problem:
            raise UserError(f"{path} scores {problem}: it is damaged or not a trained {opt.name}; do not distil from it, "
                            "fetch it again or re-train it")
        accuracy = accuracy_fact(opt.name, acc)
    status = Status(digest, LOADING_CHECKED.format(name=opt.name), accuracy, stored)
    print(f"ok: {path}: {status.line()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
