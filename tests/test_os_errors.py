"""Every operating-system error of a path the project reads or writes is one sentence (core/fs.py): the path, what the
operating system said, what to do; exit code 2, no traceback, nothing new left, never a hang.

The walk: every path flag of every parser, every written path (checkpoints, JSON, summaries, plots, exports, logs, run
folders) and every read path (checkpoints, data, run files), each with ENAMETOOLONG (a real 256-byte name), ENOTDIR (a
real path below a file), a symbolic-link loop (ELOOP), a real FIFO and /dev/null, and EACCES, EROFS, ENOSPC injected
at the operating-system call (the tests run as root, whom permissions do not stop). Standard output into a closed pipe
or /dev/full is tested on the real command line.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from core import fs
from core.checkpoint import atomic_save, atomic_write_json, file_sha256, safe_load
from core.errors import UserError, run_main
from helper.options import PathKind
from tests.conftest import ROOT
from tests.test_every_flag import _entry_points, _fixtures, _path_kind

LONG = "a" * 256  # one byte over NAME_MAX


# ------------------------------------------------------------------------------------------------ injection
def _below(path: Any, root: Path, strictly: bool) -> bool:
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:  # a file descriptor
        return False
    text = os.path.abspath(text)
    return text.startswith(str(root) + os.sep) or (not strictly and text == str(root))


@contextlib.contextmanager
def os_refuses(code: int, root: Path, file_mode_000: bool = False) -> Iterator[None]:
    """The operating system as it behaves for ``root`` when it is a folder nobody may enter (EACCES: everything below
    it fails), on a read-only file system (EROFS: writes and folders fail, reads work) or on a full disk (ENOSPC: new
    files and folders fail); with ``file_mode_000``, ``root`` is a file nobody may open (EACCES, ``chmod 000``: it can
    be examined, not opened). Patched at the calls that pathlib, open, tempfile and os use."""
    real = {name: getattr(os, name) for name in ("stat", "lstat", "open", "mkdir", "access", "statvfs", "replace")}
    real_open = builtins.open
    strictly = code == errno.EACCES and not file_mode_000

    def refuse(path: Any) -> None:
        raise OSError(code, os.strerror(code), os.fsdecode(os.fspath(path)))

    def stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if code == errno.EACCES and not file_mode_000 and _below(path, root, True):
            refuse(path)
        return real["stat"](path, *args, **kwargs)

    def lstat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if code == errno.EACCES and not file_mode_000 and _below(path, root, True):
            refuse(path)
        return real["lstat"](path, *args, **kwargs)

    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> Any:
        writes = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if _below(path, root, strictly) and (code == errno.EACCES or writes):
            refuse(path)
        return real["open"](path, flags, *args, **kwargs)

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if _below(path, root, strictly):
            refuse(path)
        return real["mkdir"](path, *args, **kwargs)

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if _below(path, root, False) and (mode & os.W_OK or code == errno.EACCES):
            return False
        return real["access"](path, mode, *args, **kwargs)

    def statvfs(path: Any) -> Any:
        result = real["statvfs"](path)
        if code == errno.EROFS and _below(path, root, False):
            return os.statvfs_result((*result[:8], result.f_flag | os.ST_RDONLY, result.f_namemax))
        return result

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if _below(dst, root, strictly):
            refuse(dst)
        return real["replace"](src, dst, *args, **kwargs)

    def py_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if not isinstance(file, int) and _below(file, root, strictly) and (
                code == errno.EACCES or any(c in mode for c in "wax+")):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    patches = {"stat": stat, "lstat": lstat, "open": os_open, "mkdir": mkdir, "access": access, "statvfs": statvfs,
               "replace": replace}
    for name, function in patches.items():
        setattr(os, name, function)
    builtins.open = io.open = py_open
    try:
        yield
    finally:
        for name, function in real.items():
            setattr(os, name, function)
        builtins.open = io.open = real_open


INJECTED = (errno.EACCES, errno.EROFS, errno.ENOSPC)


def _snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _one_sentence(call: Callable[[], Any]) -> str:
    """Run ``call`` as an entry point runs its main (core.errors.run_main): the one ``error:`` line it exits 2 with."""
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as stop, contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        run_main(call)
    lines = stderr.getvalue().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (stop.value.code, lines)
    assert "Traceback" not in lines[0] and "Errno" not in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------ every path flag
def _walk_path_flags(tmp: Path) -> Iterator[tuple[str, str, str, Callable[[list[str]], Any], list[str]]]:
    """(entry point, flag or metavar, its kind, the check the script runs before any work, the base command)."""
    from scripts import demo

    entries = dict(_entry_points(tmp))
    entries["demo.py"] = (demo.build_parser, lambda argv: demo.build_parser().parse_args(argv), [])
    for entry, (build, validate, base) in entries.items():
        for action in build()._actions:
            kind = _path_kind(entry, action)
            if kind is None and not isinstance(action.type, PathKind):
                continue
            kind = kind or action.type.kind
            yield entry, (action.option_strings or [action.metavar or action.dest])[0], kind, validate, base


def _with_value(base: list[str], flag: str, value: str) -> list[str]:
    if flag.startswith("--"):
        return [*base, flag, value]
    if flag in ("FILE", "file"):  # the one path positional with a kind: verify_teacher.py NAME FILE
        return [base[0], value, *base[2:]]
    raise AssertionError(f"no rule for the positional {flag}")


def test_every_path_flag_with_every_os_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _fixtures(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "locked").mkdir()
    os.symlink("loop", tmp_path / "loop")  # a link to itself
    cases = {
        "ENAMETOOLONG": (str(tmp_path / LONG / "x"), None),
        "ELOOP": (str(tmp_path / "loop" / "x"), None),
        "ENOTDIR": (str(tmp_path / "afile" / "x"), None),
        "FIFO": (str(tmp_path / "fifo"), None),
        "/dev/null": (os.devnull, None),
        **{errno.errorcode[code]: (str(tmp_path / "locked" / "x"), code) for code in INJECTED},
    }
    before = _snapshot(tmp_path)
    walked = 0
    for entry, flag, kind, validate, base in _walk_path_flags(tmp_path):
        for case, (value, code) in cases.items():
            argv = _with_value(base, flag, value)
            reads_only = kind in ("file", "maybe_file", "folder", "input_folder")
            if code is not None:
                with os_refuses(code, tmp_path / "locked"):
                    line = _outcome(validate, argv)
            else:
                line = _outcome(validate, argv)
            walked += 1
            # what a path flag may accept: a read-only or full disk for what it only reads, a missing file below a
            # file for a file checked again when it is read, a place on a full disk (refused when it is written)
            may_pass = ((code in (errno.EROFS, errno.ENOSPC) and reads_only) or (code == errno.ENOSPC)
                        or (case == "ENOTDIR" and kind == "maybe_file"))
            if line is None:
                assert may_pass, (entry, flag, kind, case)
                continue
            assert flag in line or fs.show_path(value) in line, (entry, flag, case, line)
            if case == "ENAMETOOLONG":
                assert "File name too long" in line and "(256 bytes)" in line, line
            if case == "ELOOP":
                assert "symbolic links" in line, line
            if case in ("FIFO", "/dev/null"):
                assert "FIFO" in line or "character device" in line, line
            if code == errno.EACCES:
                assert os.strerror(code) in line, line
            if code == errno.EROFS and kind == "output":
                assert "read-only file system" in line, line
    assert walked >= 25 * len(cases) // 2
    assert _snapshot(tmp_path) == before, "a refused command left something behind"


def _outcome(validate: Callable[[list[str]], Any], argv: list[str]) -> str | None:
    """None when ``argv`` passes the script's checks, else its one ``error:`` line (exit 2)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            run_main(lambda: validate(argv))
    except SystemExit as err:
        lines = stderr.getvalue().splitlines()
        assert err.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (argv, err.code, lines)
        return lines[0]
    return None


# ------------------------------------------------------------------------------------------------ every written path
def _digits() -> tuple[Any, Any]:
    from dataset import load_dataset

    return load_dataset("digits", "unused")


def _writers(tmp: Path) -> dict[str, Callable[[Path], Any]]:
    """Every way the project writes a file or makes a folder, by what it writes; each takes its target path."""
    from helper.logger import RunLogger
    from scripts import demo, export_cifar_format
    train, test = _digits()
    return {
        "last.pth, best.pth, teacher_cache.pth, teacher checkpoints (atomic_save)":
            lambda path: atomic_save({"w": torch.zeros(2)}, path),
        "results.json, config.json (atomic_write_json)": lambda path: atomic_write_json({"a": 1}, path),
        "summary.md (fs.write_text)": lambda path: fs.write_text(path, "table\n", location="--out"),
        "summary.csv (fs.atomic_writer)": lambda path: _write_csv(path),
        "the plot (fs.atomic_writer, binary)": lambda path: _write_png(path),
        "run folders, --out folders (fs.make_folder)": lambda path: fs.make_folder(path, location="--save_dir"),
        "the run folder of the logger (TensorBoard, W&B)": lambda path: RunLogger(path, {}, _Opt(), "student").close(),
        "an exported data set (export_cifar_format)":
            lambda path: export_cifar_format.export_cifar_format(train, test, path, source="digits"),
        "a demo log (demo._quiet_call)": lambda path: demo._quiet_call(lambda argv: print("ran"), [], path),
    }


class _Opt:
    wdb_project = wdb_entity = _tags = None
    model, seed, dataset = "resnet8", 1, "digits"


def _write_csv(path: Path) -> None:
    import csv

    with fs.atomic_writer(path, location="--out") as handle:
        csv.writer(handle).writerow(["a", "b"])


def _write_png(path: Path) -> None:
    with fs.atomic_writer(path, binary=True, location="--out") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")


def test_every_written_path_with_every_os_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    (tmp_path / "afile").write_text("a file\n")
    (tmp_path / "locked").mkdir()
    os.mkfifo(tmp_path / "fifo")
    writers = _writers(tmp_path)
    before = _snapshot(tmp_path)
    for what, write in writers.items():
        cases = {"ENAMETOOLONG": (tmp_path / LONG / "f", None, "File name too long"),
                 "ENOTDIR": (tmp_path / "afile" / "f", None, "Not a directory"),
                 **{errno.errorcode[c]: (tmp_path / "locked" / "new" / "f", c, os.strerror(c)) for c in INJECTED}}
        for case, (target, code, meaning) in cases.items():
            with os_refuses(code, tmp_path / "locked") if code else contextlib.nullcontext():
                line = _one_sentence(lambda write=write, target=target: write(target))
            assert meaning in line, (what, case, line)
            assert str(tmp_path) in line, (what, case, line)  # the path, or the folder it lies in
        # a FIFO where a file or folder goes: refused or replaced, never a hang and never written through
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                write(tmp_path / "fifo")
        except UserError as err:
            assert "FIFO" in str(err) or "exists" in str(err), (what, str(err))
        if not (tmp_path / "fifo").exists() or not (tmp_path / "fifo").is_fifo():
            for leftover in sorted(tmp_path.rglob("*"), reverse=True):  # it was replaced: put the FIFO back
                if str(leftover.relative_to(tmp_path)) not in before:
                    leftover.unlink() if not leftover.is_dir() else leftover.rmdir()
            (tmp_path / "fifo").unlink(missing_ok=True)
            (tmp_path / "fifo").rmdir() if (tmp_path / "fifo").is_dir() else None
            os.mkfifo(tmp_path / "fifo")
        assert _snapshot(tmp_path) == before, f"{what} left something behind"


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    target.write_text('{"kept": true}\n')
    with os_refuses(errno.ENOSPC, tmp_path), pytest.raises(UserError) as err:
        atomic_write_json({"new": 1}, target)
    assert str(err.value).startswith(f"could not write {target} (No space left on device); the previous file there "
                                     "is unchanged, free some space on that disk or choose another --save_dir")
    assert target.read_text() == '{"kept": true}\n' and _snapshot(tmp_path) == ["results.json"]


# ------------------------------------------------------------------------------------------------ every read path
def test_every_read_path_with_every_os_error(tmp_path: Path, fake_cifar: Path) -> None:
    from dataset.cifar100 import load_cifar100

    locked = tmp_path / "locked"
    locked.mkdir()
    checkpoint = locked / "ckpt.pth"
    torch.save({"model": {}}, checkpoint)
    (locked / "results.json").write_text("{}")
    (tmp_path / "afile").write_text("a file\n")
    os.mkfifo(tmp_path / "fifo")
    readers: dict[str, tuple[Callable[[Path], Any], Path]] = {
        "a checkpoint (safe_load)": (safe_load, checkpoint),
        "a teacher's digest (file_sha256)": (file_sha256, checkpoint),
        "results.json, config.json (fs.read_text)": (fs.read_text, locked / "results.json"),
        "the data folder (load_cifar100)": (lambda path: load_cifar100(path, download=False), locked / "data"),
    }
    for what, (read, unreadable) in readers.items():
        with os_refuses(errno.EACCES, locked):
            line = _one_sentence(lambda read=read, path=unreadable: read(path))
        assert "Permission denied" in line and "truncated" not in line, (what, line)
        line = _one_sentence(lambda read=read: read(tmp_path / LONG / "f"))
        assert "File name too long" in line, (what, line)
        for special in (tmp_path / "fifo", Path(os.devnull)):  # never read: a FIFO would block, /dev/null is empty
            line = _one_sentence(lambda read=read, path=special: read(path))
            if what != "the data folder (load_cifar100)":  # a folder's files are looked for below it: "not in" it
                assert "FIFO" in line or "character device" in line, (what, line)
    # the real CIFAR-100 folder, one of its files unreadable: named as such, never "truncated ... download again"
    with os_refuses(errno.EACCES, fake_cifar / "cifar-100-python"):
        line = _one_sentence(lambda: load_cifar100(fake_cifar, download=False))
    assert "Permission denied" in line and "cifar-100-python" in line and "truncated" not in line, line


# ------------------------------------------------------------------------------------------------ a whole run
def test_a_run_that_cannot_read_its_teacher_or_write_its_results(digits_save: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import train_student
    from helper.options import teacher_checkpoint_path

    monkeypatch.setenv("WANDB_MODE", "disabled")
    save = tmp_path / "save"
    teacher = teacher_checkpoint_path(digits_save, "digits", "resnet8")
    argv = ["--dataset", "digits", "--model_s", "resnet8", "--model_t", "resnet8", "--path_t", str(teacher),
            "--save_dir", str(save), "--device", "cpu", "--epochs", "1", "--subset_size", "100", "--batch_size", "16"]
    with os_refuses(errno.EACCES, teacher.parent):  # its folder cannot be entered: refused with the flag
        line = _one_sentence(lambda: train_student.main(argv))
    assert line.startswith(f"error: --path_t {teacher} cannot be used (Permission denied)"), line
    with os_refuses(errno.EACCES, teacher, file_mode_000=True):  # the file cannot be opened: refused when it is read
        line = _one_sentence(lambda: train_student.main(argv))
    assert line.startswith(f"error: could not read {teacher} (Permission denied)"), line
    assert not save.exists()

    def results_on_a_full_disk(obj: Any, path: Any) -> None:  # the disk is full when results.json is written
        with os_refuses(errno.ENOSPC, Path(path).parent):
            atomic_write_json(obj, path)

    monkeypatch.setattr("helper.student_trainer.atomic_write_json", results_on_a_full_disk)
    line = _one_sentence(lambda: train_student.main(argv))
    assert "results.json (No space left on device)" in line and "--save_dir" in line, line
    assert not any(p.name == "results.json" or p.name.endswith(".tmp") for p in save.rglob("*"))


# ------------------------------------------------------------------------------------------------ standard output
class _Broken(io.StringIO):
    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def write(self, text: str) -> int:
        raise OSError(self.code, os.strerror(self.code))

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


def test_guarded_streams_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", _Broken(errno.EPIPE))
    assert run_main(lambda: print("a line nobody reads") or 0) == 0  # a closed pipe: quiet, the command's own code
    assert err.getvalue() == ""
    monkeypatch.setattr(sys, "stdout", _Broken(errno.ENOSPC))
    with pytest.raises(SystemExit) as stop:
        run_main(lambda: print("a line that cannot be written") or 0)
    assert stop.value.code == 2
    assert err.getvalue() == ("error: could not write the output to stdout (No space left on device); send stdout to a "
                              "file on a disk with room to see what the command printed\n")


def test_closed_pipe_and_full_device_on_the_command_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # entry points through core.errors.run_main, as every script's: one prints the variable table (without importing
    # torch), the other more lines than a pipe holds, so that they meet the closed pipe
    command = [sys.executable, "-m", "core.env", "--table"]
    many_lines = [sys.executable, "-c", "from core.errors import run_main; "
                  "run_main(lambda: [print('line', i) for i in range(100000)] and 0)"]
    with open("/dev/full", "w") as full:
        to_full = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=full, stderr=subprocess.PIPE, text=True)
    to_pipe = subprocess.Popen(many_lines, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    to_pipe.stdout.readline()  # `| head -n 1`: read one line, then close the pipe
    to_pipe.stdout.close()
    _, err = to_pipe.communicate(timeout=60)
    assert to_pipe.returncode == 0 and err == "", err
    _, err = to_full.communicate(timeout=60)
    assert to_full.returncode == 2 and err == ("error: could not write the output to stdout (No space left on device); "
                                               "send stdout to a file on a disk with room to see what the command "
                                               "printed\n"), err


# ------------------------------------------------------------------------------------------------ W&B on a full disk
def test_wandb_own_log_errors_are_not_printed_after_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    """W&B logs through Python's logging into files of the run folder; on a full disk each record used to print a
    "--- Logging error ---" traceback (about 60 lines at shutdown) after the run's one-line error."""
    import logging

    import wandb

    from helper.logger import RunLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(logging, "raiseExceptions", True)  # Python's default; the test restores it
    full = open("/dev/full", "w")  # noqa: SIM115 - closed below, after the handler is removed
    handler = logging.StreamHandler(full)  # W&B's debug log, on a disk that is full

    class Run:
        def finish(self, exit_code: int = 0, quiet: bool = True) -> None:
            logging.getLogger("wandb").error("a record W&B writes while it shuts down")

    def init(**kwargs: Any) -> Run:
        logging.getLogger("wandb").addHandler(handler)
        return Run()

    monkeypatch.setattr(wandb, "init", init)
    try:
        logger = RunLogger(tmp_path / "run", {}, _Opt(), "teacher", tensorboard=False)
        assert logger.wandb is not None
        logger.close(2)
    finally:
        logging.getLogger("wandb").removeHandler(handler)
        with contextlib.suppress(OSError):  # what the handler could not write is still buffered
            full.close()
    assert "Logging error" not in capfd.readouterr().err
