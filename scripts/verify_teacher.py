#!/usr/bin/env python3
"""Check that a file is a loadable teacher checkpoint of a given architecture.

    python scripts/verify_teacher.py resnet56 save/models/resnet56_vanilla/ckpt_epoch_240.pth

The file is read with ``torch.load(weights_only=True)`` (a pickle that would import or call code
is refused, never run), its weights are taken from RepDistiller's ``{'model': state_dict, ...}``
layout (or a bare state_dict) and loaded strictly into ``model_dict[NAME](num_classes=100)``.
Prints one line and exits 0 when the file is good; one sentence on stderr and exit 2 when not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import UserError, run_main
from helper.options import OneLineParser

NUM_CLASSES = 100


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


def main(argv: list[str] | None = None) -> int:
    parser: argparse.ArgumentParser = OneLineParser(
        prog="verify_teacher.py", description="Check that FILE is a safe, loadable NAME teacher checkpoint (100 classes).")
    parser.add_argument("name", help="architecture, one of models.model_dict (e.g. resnet56)")
    parser.add_argument("file", type=Path, help="checkpoint to check")
    opt = parser.parse_args(argv)
    print(verify(opt.name, opt.file), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
