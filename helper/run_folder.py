"""What a run is and where it lives: the flags and the teacher that make its identity, the run-folder name, the
folder of a run made by an earlier release, and the lock that keeps one process per run folder.

A student run's identity is what determines its numbers: its flags (but paths, logging and resume) and the content
of its teacher (the SHA-256 of the teacher file), never where ``--save_dir`` lives or how a path is spelt. So a
copied or moved save folder, or ``--save_dir save`` instead of its absolute path, finds every run finished or
resumable. A folder named by the previous release (whose name hashed the resolved ``--path_t``, and with it
``--save_dir``) is found and renamed once (:func:`adopt_earlier_run_folder`).

Imports :mod:`helper.config` (the configurations whose identity it computes); :mod:`helper.options` (flags, defaults,
parsers, path checks) imports nothing of either, so the modules of ``helper/`` form no import circle
(``tests/test_layers.py`` checks the graph).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core import fs
from core.errors import UserError
from helper.config import StudentConfig, TeacherConfig
from helper.options import teacher_checkpoint_path

# flags that never change what a run computes (paths, resume, logging), so they do not enter the run-folder name;
# --path_t is replaced by the content digest of the teacher it names (teacher_digest)
NON_IDENTITY_FLAGS = ("resume", "save_dir", "keep_cache", "keep_last", "data_folder", "wdb_project", "wdb_entity", "_tags",
                      "path_t")
# a teacher folder also ignores where it trains and how often it keeps a periodic checkpoint
TEACHER_NON_IDENTITY_FLAGS = (*NON_IDENTITY_FLAGS, "device", "save_freq")

# the run-folder name of the previous release (0.x, before the teacher digest): the sha1 of these fields of the
# configuration, --path_t resolved against --save_dir as spelt (so a moved or respelt save folder got a new name)
EARLIER_IGNORED = ("resume", "save_dir", "keep_cache", "keep_last", "data_folder", "wdb_project", "wdb_entity", "_tags")
EARLIER_FIELDS = (
    "dataset", "data_folder", "device", "batch_size", "momentum", "weight_decay", "seed", "trial", "save_dir", "resume",
    "keep_last", "wdb_project", "wdb_entity", "_tags", "amp", "channels_last", "compile", "deterministic", "model_s",
    "model_t", "path_t", "distill", "relational", "subset_size", "train_val_frac", "use_DA", "learning_rate", "epochs",
    "patience", "lr_decay_rate", "lr_decay_times", "w_cls", "w_kd", "w_rel_scale", "w_inter_scale", "kd_T", "logit_stand",
    "ttm_l", "loss_fn", "pos_and_neg", "max_rel_samples", "feat_dim", "mode", "nce_k", "nce_t", "nce_m", "hint_layer",
    "init_epochs", "teacher_views", "teacher_view", "cache_dtype", "keep_cache", "calibrate",
)

LOCK_NAME = "run.lock"

_DIGESTS: dict[tuple[Any, ...], str] = {}  # the teacher digests of this process, keyed by file identity and mtime


def identity_config(cfg: StudentConfig | TeacherConfig, ignored: tuple[str, ...] = NON_IDENTITY_FLAGS) -> dict[str, Any]:
    """The flags that define what a run computes (everything but paths, logging and resume)."""
    return {k: v for k, v in sorted(cfg.to_dict().items()) if k not in ignored and not k.startswith("__")}


def teacher_identity_config(opt: TeacherConfig) -> dict[str, Any]:
    """The flags a teacher folder is bound to (a rerun resumes only when they are equal)."""
    return identity_config(opt, TEACHER_NON_IDENTITY_FLAGS)


def teacher_digest(path: str | os.PathLike) -> str | None:
    """The SHA-256 of the teacher file ``path`` (None when there is no such file), computed once per process and file
    version (the file's device, inode, size and modification time)."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if key not in _DIGESTS:
        from core.checkpoint import file_sha256  # deferred: core.checkpoint imports torch

        try:
            _DIGESTS[key] = file_sha256(path)
        except OSError as err:
            raise UserError(fs.os_error_message(err, path, "read", location="--path_t")) from err
    return _DIGESTS[key]


def _readable_name(opt: StudentConfig) -> str:
    method = opt.relational or "none"
    return (f"S-{opt.model_s}_T-{opt.model_t}_{opt.dataset}_r-{method}_d-{opt.distill}"
            f"_n{'all' if opt.subset_size is None else opt.subset_size}_lr{opt.learning_rate:g}_seed{opt.seed}_trial{opt.trial}")


def _short_hash(config: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_name(opt: StudentConfig, teacher_sha256: str | None) -> str:
    """A readable, unique folder name: two configurations that differ in any flag of :func:`identity_config` or in
    the teacher's content (``teacher_sha256``, None when the teacher file is missing) get different names; paths never
    enter it."""
    return f"{_readable_name(opt)}_{_short_hash({**identity_config(opt), 'teacher_sha256': teacher_sha256})}"


def student_run_dir(opt: StudentConfig) -> Path:
    """The folder of a student run: ``{save_dir}/student/{run_name}``."""
    return Path(opt.save_dir) / "student" / run_name(opt, teacher_digest(opt.teacher_path))


def _spellings(path: Path) -> list[str]:
    """The ways a path may have been spelt on an earlier command line: as given, absolute, resolved, relative."""
    forms = [str(path), os.path.abspath(path), os.path.realpath(path)]
    with contextlib.suppress(ValueError):
        forms.append(os.path.relpath(os.path.abspath(path)))
    return list(dict.fromkeys(forms))


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(StudentConfig) if f.init}


def _later_flags_at_default(opt: StudentConfig) -> bool:
    """True when every flag added since the previous release has its default: only then can a folder of that release
    hold this run (it ran with the default behaviour)."""
    defaults = _defaults()
    return all(value == defaults[k] for k, value in identity_config(opt).items() if k not in EARLIER_FIELDS)


def earlier_run_names(opt: StudentConfig) -> list[str]:
    """The names the previous release gave this run's folder, one per spelling of its resolved ``--path_t`` (none when
    a flag added since then is not at its default)."""
    if not _later_flags_at_default(opt):
        return []
    fields = {k: v for k, v in opt.to_dict().items() if k in EARLIER_FIELDS}
    if opt.path_t is not None:
        paths = [opt.path_t, *_spellings(Path(opt.path_t))]  # the flag's text as typed came first
    else:
        paths = [str(teacher_checkpoint_path(save, opt.dataset, opt.model_t)) for save in _spellings(Path(opt.save_dir))]
    names = []
    for path_t in dict.fromkeys(paths):
        config = {k: v for k, v in sorted({**fields, "path_t": path_t}.items()) if k not in EARLIER_IGNORED}
        names.append(f"{_readable_name(opt)}_{_short_hash(config)}")
    return names


def _stored_results(folder: Path) -> dict[str, Any] | None:
    try:
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None


def _same_teacher(folder: Path, teacher_sha256: str | None) -> bool:
    """False only when the folder's results record another teacher than ``teacher_sha256``."""
    results = _stored_results(folder)
    recorded = results.get("teacher_sha256") if results else None
    return recorded is None or teacher_sha256 is None or recorded == teacher_sha256


def _same_flags(opt: StudentConfig, results: dict[str, Any]) -> bool:
    """True when a finished run's recorded configuration has this run's identity flags (the subset size, resolved
    against the data there, is part of the folder's readable name); a flag it does not record (added since) must be
    at its default here."""
    stored = results.get("config")
    if not isinstance(stored, dict):
        return False
    skip = (*NON_IDENTITY_FLAGS, "subset_size")
    defaults = json.loads(json.dumps(_defaults(), default=str))
    mine = json.loads(json.dumps({k: v for k, v in identity_config(opt).items() if k not in skip}, default=str))
    theirs = {k: v for k, v in stored.items() if k not in skip}
    return set(theirs) <= set(mine) and all(theirs[k] == v if k in theirs else v == defaults.get(k) for k, v in mine.items())


def find_earlier_run_folder(opt: StudentConfig, run_dir: Path, teacher_sha256: str | None) -> Path | None:
    """The folder the previous release made for this run: under one of :func:`earlier_run_names` (the save folder was
    not moved), else a finished run of the same flags and teacher under the same readable name (it was moved)."""
    student = run_dir.parent
    for name in earlier_run_names(opt):
        folder = student / name
        if folder != run_dir and folder.is_dir() and _same_teacher(folder, teacher_sha256):
            return folder
    if teacher_sha256 is None or not student.is_dir():
        return None
    for folder in sorted(student.glob(f"{_readable_name(opt)}_*")):
        results = _stored_results(folder) if folder != run_dir else None
        if results and results.get("teacher_sha256") == teacher_sha256 and _same_flags(opt, results):
            return folder
    return None


def adopt_earlier_run_folder(opt: StudentConfig, run_dir: Path, teacher_sha256: str | None) -> None:
    """Rename, once and with a line saying so, the folder an earlier release made for this run to ``run_dir``, so
    nothing it trained is trained again. Nothing happens when ``run_dir`` exists or there is no such folder."""
    if run_dir.exists():
        return
    earlier = find_earlier_run_folder(opt, run_dir, teacher_sha256)
    if earlier is None:
        return
    try:
        earlier.rename(run_dir)
    except OSError as err:
        if run_dir.is_dir():  # another process adopted it first
            return
        raise UserError(fs.os_error_message(err, earlier, "rename the earlier run folder", location="--save_dir",
                                            note=f"rename it to {run_dir.name} by hand")) from err
    print(f"renamed the run folder {earlier.name} to {run_dir.name} in {run_dir.parent}: run folders are now named by "
          "their flags and the teacher's content, not by where --save_dir lives (done once; nothing is trained again)",
          flush=True)


def _lock_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 400, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not written its pid yet"


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/run.lock`` (``fcntl.flock``, released by the OS when the process ends, also by SIGKILL) while the
    block runs; the file names the holder (pid, host, start time). A second process is refused at once with one
    sentence naming the first (raises UserError). The folders this call created (the folder and its missing parents)
    are removed again when the block left nothing in them, so an early failure leaves nothing behind."""
    folder = Path(folder)
    created = []  # deepest first
    probe = folder
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise UserError(f"{folder} is being trained by another process ({holder}); wait for it to finish or "
                                "stop it, then run the same command again") from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                print(f"warning: {folder} cannot be locked on this file system ({err.strerror}); make sure no other "
                      "process trains it", flush=True)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not a lock file its last holder had just removed
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, started {stamp}\n".encode(), 0)
    except OSError as err:
        raise UserError(fs.os_error_message(err, folder, "write to", location="--save_dir")) from err
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        for made in created:
            try:
                made.rmdir()  # only when the run left nothing in it
            except OSError:
                break


def missing_teacher_message(opt: StudentConfig) -> str:
    """One sentence for a teacher checkpoint that is not there, with the command that makes it for this data set."""
    train = f"python train_teacher.py --model {opt.model_t} --dataset {opt.dataset}"
    if opt.dataset == "stanfordcars":
        train += f" --data_folder {opt.data_folder}"
    if opt.dataset != "cifar100":
        return f"teacher checkpoint {opt.teacher_path} does not exist; train it with `{train}` (then pass the same --save_dir)"
    return (f"teacher checkpoint {opt.teacher_path} does not exist; get it with `sh scripts/fetch_pretrained_teachers.sh` "
            f"or train it with `{train}`")
