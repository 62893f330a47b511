"""The set-up both trainers share: the writable check, leftover temp files, the resume refusal, loading the data with
flag-aware errors, and the logger's lifetime.

Imports no distillation code, so teacher training stays free of the method table's losses, CRD and the samplers'
methods (``tests/test_layers.py`` checks it).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import fs
from core.checkpoint import atomic_write_bytes, remove_stale_temp_files
from core.errors import DataNotFound, UserError
from dataset import ImageSet, load_dataset
from helper.logger import RunLogger
from helper.options import data_not_found_message

if TYPE_CHECKING:
    from helper.config import StudentConfig, TeacherConfig

    RunConfig = StudentConfig | TeacherConfig


def ensure_writable(folder: Path) -> None:
    """Check, before any expensive work and without creating anything, that ``folder`` can be made and written:
    its nearest existing parent must be a writable folder. The folder is made when its first file is written."""
    existing = fs.existing_ancestor(folder)  # one that cannot be searched: core.fs's sentence
    if fs.kind_of(existing) != "a folder":
        reason = os.strerror(errno.ENOTDIR)
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = os.strerror(errno.EROFS if fs.read_only_mount(existing) else errno.EACCES)
    else:
        return
    raise UserError(f"cannot write to {folder} ({reason}); choose a writable --save_dir")


def clean_leftovers(run_dir: Path) -> None:
    """Delete the temporary files of checkpoint writes that were killed, and say so."""
    for leftover in remove_stale_temp_files(run_dir):
        print(f"removed {leftover.name}, left by a checkpoint write that was killed", flush=True)


def refuse_resume_without_checkpoint(opt: RunConfig, last_path: Path, start_fresh: str) -> None:
    """``--resume`` needs ``last_path``; without it, one sentence saying how to ``start_fresh`` instead."""
    if opt.resume and not last_path.is_file():
        raise UserError(f"--resume was given but {last_path} does not exist; drop --resume to {start_fresh}")


FAILED_NAME = "FAILED"  # the mark of a run that failed in a way the same flags repeat (a non-finite loss)


def mark_failed(run_dir: Path, reason: str) -> None:
    """Mark ``run_dir`` as a failed run: ``FAILED`` holds the one-sentence reason; the same command then refuses to
    resume it (:func:`refuse_failed_run`) instead of diverging again."""
    atomic_write_bytes(Path(run_dir) / FAILED_NAME, (reason.strip() + "\n").encode("utf-8"))


def refuse_failed_run(run_dir: Path) -> None:
    """One sentence when ``run_dir`` holds a run marked failed: what failed and what to do."""
    path = Path(run_dir) / FAILED_NAME
    if not path.is_file():
        return
    try:
        reason = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[0].rstrip(".")
    except (OSError, IndexError):
        reason = "its reason is unreadable"
    raise UserError(f"{run_dir} holds a run that failed ({reason}); the same flags would fail the same way, so it is not "
                    f"resumed: change the flag named there (that is a new run), or delete {run_dir} to run it again")


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` when it exists and holds nothing (a run stopped or failed before its first file)."""
    with contextlib.suppress(OSError):
        Path(folder).rmdir()


def load_data(opt: RunConfig) -> tuple[ImageSet, ImageSet]:
    """(train, test) of ``--dataset`` from ``--data_folder``; data that is not there says how to point elsewhere."""
    try:
        return load_dataset(opt.dataset, opt.data_folder)
    except DataNotFound as err:
        raise UserError(data_not_found_message(err)) from err


@contextlib.contextmanager
def open_logger(run_dir: Path, config: dict[str, Any], opt: RunConfig, job_type: str,
                wandb_id: str | None) -> Iterator[RunLogger]:
    """The run's logger, closed with the run's exit code: 0 when the block completes, the code of a ``SystemExit``
    (a stop by signal), 1 for any other exception."""
    logger = RunLogger(run_dir, config, opt, job_type=job_type, wandb_id=wandb_id)
    exit_code = 1
    try:
        yield logger
        exit_code = 0
    except SystemExit as stop:
        exit_code = stop.code if isinstance(stop.code, int) else 1
        raise
    finally:
        logger.close(exit_code)
