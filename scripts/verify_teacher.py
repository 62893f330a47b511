#!/usr/bin/env python3
"""Check that a file is a loadable teacher checkpoint of a given architecture.

    python scripts/verify_teacher.py resnet56 save/models/resnet56_vanilla/ckpt_epoch_240.pth

The file is read with ``torch.load(weights_only=True)`` (a pickle that would import or call code
is refused, never run), its weights are taken from RepDistiller's ``{'model': state_dict, ...}``
layout (or a bare state_dict) and loaded strictly into ``model_dict[NAME](num_classes=100)``.
Prints one line and exits 0 when the file is good; one sentence on stderr and exit 2 when not.

With ``--data_folder DIR`` (a folder holding ``cifar-100-python/``, never downloaded here) it also reports the
teacher's CIFAR-100 test accuracy next to the published one (RepDistiller's table) and warns on stderr when it is
more than one point lower; the exit code stays 0, since the file itself is sound.
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
import sys
from pathlib import Path

from core.errors import UserError, run_main
from helper.options import OneLineParser, PathKind

NUM_CLASSES = 100
# CIFAR-100 top-1 test accuracy (%) of the published teachers, RepDistiller's table (Tian et al., ICLR 2020)
PUBLISHED_ACCURACY = {"wrn_40_2": 75.61, "resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "vgg13": 74.64,
                      "ResNet50": 79.34}
ACCURACY_TOLERANCE = 1.0  # points below the published accuracy before a warning


def verify(name: str, path: Path, num_classes: int = NUM_CLASSES) -> str:
    """Return a one-line description of a good checkpoint; raise UserError otherwise."""
    import torch

    from core.checkpoint import extract_state_dict, load_weights_strict, safe_load
    from models import model_dict

    if name not in model_dict:
        raise UserError(f"unknown architecture '{name}'; choose one of {', '.join(model_dict)}")
    try:
        checkpoint = safe_load(path)
    except UserError:
        raise
    except Exception as err:  # e.g. struct.error from a few-byte file: still a bad download, never a traceback
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}); "
                        "delete it and re-download or re-train it") from err
    state_dict = extract_state_dict(checkpoint, path)
    model = model_dict[name](num_classes=num_classes)
    load_weights_strict(model, state_dict, name, path)
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{path} holds non-finite weights (first: {bad[0]}); delete it and re-download or re-train it")
    details = []
    if isinstance(checkpoint, dict):
        for key in ("epoch", "accuracy", "best_acc"):
            value = checkpoint.get(key)
            if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
                details.append(f"{key} {float(value):g}")
    extra = f" ({', '.join(details)})" if details else ""
    return f"ok: {path} holds a valid {name} with {num_classes} classes{extra}"


def cifar100_test_accuracy(name: str, path: Path, data_folder: Path, device: str = "auto") -> float:
    """CIFAR-100 test top-1 accuracy (%) of the checkpoint at ``path`` (already verified), as the trainers evaluate it."""
    from core.checkpoint import extract_state_dict, safe_load
    from core.device import resolve_device
    from dataset.augment import DeviceAugment
    from dataset.cifar100 import load_cifar100
    from helper.engine import evaluate
    from models import model_dict

    _, test = load_cifar100(data_folder, download=False)
    target = resolve_device(device)
    model = model_dict[name](num_classes=NUM_CLASSES)
    model.load_state_dict(extract_state_dict(safe_load(path), path), strict=True)
    model.to(target)
    augment = DeviceAugment.for_images(test, use_DA=0, device=target)
    stats = evaluate(model, test.images.to(target), test.labels.to(target), augment.normalize_eval)
    return float(stats["acc"])


def accuracy_report(name: str, path: Path, data_folder: Path, device: str = "auto") -> list[str]:
    """One line with the test accuracy next to the published one, plus a line starting 'warning:' when it is more
    than ACCURACY_TOLERANCE points lower."""
    acc = cifar100_test_accuracy(name, path, data_folder, device)
    published = PUBLISHED_ACCURACY.get(name)
    if published is None:
        return [f"CIFAR-100 test accuracy {acc:.2f}% (no published accuracy for {name})"]
    lines = [f"CIFAR-100 test accuracy {acc:.2f}% (published {published:.2f}%)"]
    if acc < published - ACCURACY_TOLERANCE:
        lines.append(f"warning: {path} reaches {acc:.2f}% on the CIFAR-100 test set, {published - acc:.2f} points below "
                     f"the published {published:.2f}%; it may be damaged or not the published {name}, so re-download "
                     "or re-train it before distilling from it")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = OneLineParser(
        prog="verify_teacher.py", description="Check that FILE is a safe, loadable NAME teacher checkpoint (100 classes).")
    parser.add_argument("name", help="architecture, one of models.model_dict (e.g. resnet56)")
    parser.add_argument("file", type=PathKind("file", "FILE"), metavar="FILE", help="checkpoint to check")
    parser.add_argument("--data_folder", type=PathKind("folder", "--data_folder"), default=None,
                        help="folder holding cifar-100-python/: also report the CIFAR-100 test accuracy next to the published one")
    parser.add_argument("--device", default="auto", help="device of the accuracy check: auto, cpu, cuda, cuda:N or mps")
    return parser


def main(argv: list[str] | None = None) -> int:
    opt = build_parser().parse_args(argv)
    print(verify(opt.name, opt.file), flush=True)
    if opt.data_folder is not None:
        for line in accuracy_report(opt.name, opt.file, opt.data_folder, opt.device):
            print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
