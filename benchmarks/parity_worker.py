#!/usr/bin/env python3
"""Run the published CKD ``train_student.py`` once, in this process, and write its numbers as JSON.

    python benchmarks/parity_worker.py --published CKD_CHECKOUT --data_folder DATA --result OUT.json \
        --scratch_root DIR -- --model_s resnet8 --path_t T/resnet20_vanilla/ckpt_epoch_240.pth ...

Started by benchmarks/parity.py, one fresh interpreter per run: the published code and this project both
have top-level packages named ``dataset``, ``helper`` and ``models``, so this file imports nothing from
this project. It runs the published ``main()`` unchanged, after replacing what ties it to one machine:

- ``.cuda()`` on tensors and modules is the identity when CUDA is absent;
- ``wandb`` is a stand-in module whose run keeps every ``run.log`` dict (the last one holds
  ``test_acc`` and ``best_val_acc``), and ``tensorboard_logger`` a stand-in that keeps nothing;
- torchvision's CIFAR md5 checks only check that the files exist, and nothing is downloaded;
- ``dataset.cifar100.get_data_folder`` returns ``--data_folder``;
- one CPU thread, and the working directory is a fresh folder under ``--scratch_root`` (the published
  code writes ``temp/`` and ``save/`` there), removed after a successful run.

The flags after ``--`` go to the published argument parser as they are.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

PUBLISHED_PACKAGES = ("dataset", "helper", "models", "distiller_zoo", "crd")


def _to_plain(value: Any) -> Any:
    """Tensors and numpy scalars to Python numbers, so logged values go into JSON."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


class RecordingRun:
    """What ``wandb.init`` returns here: ``config`` as a dict and ``log`` that keeps every call."""

    def __init__(self, config: dict[str, Any] | None) -> None:
        self.config = dict(config or {})
        self.logs: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}

    def log(self, data: dict[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        self.logs.append({"_step": step, **{key: _to_plain(value) for key, value in data.items()}})

    def finish(self, *args: Any, **kwargs: Any) -> None:
        return None


class RecordingWandb(types.ModuleType):
    """Stand-in ``wandb`` module: no account, no network, nothing written."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.runs: list[RecordingRun] = []

    def init(self, *args: Any, config: dict[str, Any] | None = None, **kwargs: Any) -> RecordingRun:
        run = RecordingRun(config)
        self.runs.append(run)
        return run

    def log(self, data: dict[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        self.runs[-1].log(data, step=step, commit=commit)

    def finish(self, *args: Any, **kwargs: Any) -> None:
        return None


class SilentTensorboardLogger:
    """Stand-in ``tensorboard_logger.Logger``: accepts values and keeps nothing."""

    def __init__(self, logdir: str | None = None, flush_secs: int = 2) -> None:
        self.logdir = logdir

    def log_value(self, name: str, value: Any, step: int | None = None) -> None:
        return None


def _identity_cuda(self: Any, *args: Any, **kwargs: Any) -> Any:
    return self


def install_shims(published: Path, data_folder: Path) -> RecordingWandb:
    """Make the published code importable and runnable here; return the recording wandb module."""
    import torch

    torch.set_num_threads(1)
    if not torch.cuda.is_available():
        torch.Tensor.cuda = _identity_cuda
        torch.nn.Module.cuda = _identity_cuda

    fake_wandb = RecordingWandb()
    sys.modules["wandb"] = fake_wandb
    tb_module = types.ModuleType("tensorboard_logger")
    tb_module.Logger = SilentTensorboardLogger
    sys.modules["tensorboard_logger"] = tb_module

    import torchvision.datasets.cifar as tv_cifar

    def files_present(fpath: str, md5: str | None = None) -> bool:
        return os.path.isfile(fpath)

    def no_download(self: Any) -> None:
        return None

    tv_cifar.check_integrity = files_present  # used by CIFAR10._check_integrity and _load_meta
    tv_cifar.CIFAR10.download = no_download

    # parity.py starts this worker as `python -P` with PYTHONPATH=<published checkout>: the published packages come
    # first on the import path, and this script's folder (this project's benchmarks/) is not on it
    found = importlib.util.find_spec("dataset")
    origin = Path(found.origin).resolve() if found is not None and found.origin else None
    if origin is None or Path(published).resolve() not in origin.parents:
        raise SystemExit(f"error: the published package 'dataset' must come from {published} (got {origin}); start this "
                         "worker through benchmarks/parity.py, which sets PYTHONPATH to the published checkout")
    return fake_wandb


def load_published_main(published: Path, data_folder: Path) -> tuple[types.ModuleType, dict[str, list[Any]]]:
    """Import the published train_student.py with ``get_data_folder`` redirected; record the teacher's
    accuracy (its first ``validate`` call) and the learning rate of each phase."""
    spec = importlib.util.spec_from_file_location("published_train_student", published / "train_student.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    import dataset.cifar100 as published_cifar  # the published package (PYTHONPATH, checked above)

    published_cifar.get_data_folder = lambda: str(data_folder)

    seen: dict[str, list[Any]] = {"teacher_acc": [], "lr_phases": []}
    validate, adjust = module.validate, module.early_stopping_adjust_lr

    def validate_recording(loader: Any, model: Any, criterion: Any, opt: Any) -> Any:
        result = validate(loader, model, criterion, opt)
        seen["teacher_acc"].append(_to_plain(result[0]))
        return result

    def adjust_recording(times_lr_adjusted: int, opt: Any, optimizer: Any) -> None:
        adjust(times_lr_adjusted, opt, optimizer)
        lr = optimizer.param_groups[0]["lr"]
        if not seen["lr_phases"] or seen["lr_phases"][-1] != lr:
            seen["lr_phases"].append(lr)

    module.validate = validate_recording  # main() calls it once, for the teacher; the loops use their own
    module.early_stopping_adjust_lr = adjust_recording
    return module, seen


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summarize_logs(logs: list[dict[str, Any]]) -> dict[str, Any]:
    """test_acc etc. from the last logged dict that has them; the validation curve from the others."""
    final = next((entry for entry in reversed(logs) if "test_acc" in entry), None)
    if final is None:
        raise RuntimeError("the published run logged no test_acc; it did not reach the end of main()")
    val_curve = [[entry["_step"], entry["val_acc"]] for entry in logs if "val_acc" in entry]
    return {
        "test_acc": final["test_acc"],
        "test_acc_top5": final.get("test_acc_top5"),
        "test_loss": final.get("test_loss"),
        "best_val_acc": final.get("best_val_acc"),
        "pseudo_epochs": val_curve[-1][0] if val_curve else 0,
        "val_acc_curve": val_curve,
    }


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv and not {"-h", "--help"} & set(argv):
        print("error: put the published train_student.py flags after --", file=sys.stderr)
        sys.exit(2)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="parity_worker.py", usage="%(prog)s [options] -- PUBLISHED TRAIN_STUDENT FLAGS",
                                     description="One run of the published train_student.py (started by scripts/parity.py; "
                                                 "imports only the published checkout, never this project).")
    parser.add_argument("--published", required=True, type=Path)
    parser.add_argument("--data_folder", required=True, type=Path)
    parser.add_argument("--result", required=True, type=Path)
    parser.add_argument("--scratch_root", required=True, type=Path)
    parser.add_argument("--meta", default="{}", help="JSON object copied into the result")
    opt = parser.parse_args(argv[:split])
    flags = argv[split + 1:]
    published, data_folder = opt.published.resolve(), opt.data_folder.resolve()
    result_path = opt.result.resolve()

    fake_wandb = install_shims(published, data_folder)
    module, seen = load_published_main(published, data_folder)
    opt.scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="published-", dir=opt.scratch_root)).resolve()
    os.chdir(scratch)
    sys.argv = ["train_student.py", *flags]
    start = time.time()
    module.main()
    wall = time.time() - start
    os.chdir(published)
    numbers = summarize_logs(fake_wandb.runs[-1].logs)
    result = {
        **json.loads(opt.meta),
        **numbers,
        "teacher_acc": seen["teacher_acc"][0] if seen["teacher_acc"] else None,
        "lr_phases": seen["lr_phases"],
        "wall_time_s": round(wall, 1),
        "flags": flags,
    }
    write_json_atomic(result, result_path)
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"parity_worker: test_acc {result['test_acc']:.2f} best_val_acc {result['best_val_acc']:.2f} "
          f"-> {result_path}", flush=True)


if __name__ == "__main__":
    main()
