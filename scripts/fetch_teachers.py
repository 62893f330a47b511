#!/usr/bin/env python3
"""Fetch, check and install the published RepDistiller CIFAR-100 teachers: the one implementation behind
``scripts/fetch_pretrained_teachers.sh`` (the entry point the README names; it runs this file with its arguments).

    sh scripts/fetch_pretrained_teachers.sh --only resnet110,wrn_40_2,vgg13

Each teacher goes to ``{save_dir}/models/{name}_vanilla/ckpt_epoch_240.pth``, where train_student.py looks for it.

Sources, in order (``--source auto``): the per-file mirrors (RepDistiller's own server, dead for years, then
``$TEACHER_MIRROR``; ``$TEACHER_MIRRORS`` replaces the list), then mdistiller's release archive ``cifar_teachers.tar``
(``$TEACHER_ARCHIVE_URL``), downloaded once into the save folder and read member by member. Downloads go through a
``.part`` file that an interrupted run leaves behind and the next run resumes (HTTP Range).

Every file is checked before it is installed, and every teacher gets one status line with three facts: its digest
(pinned in scripts/teachers.sha256 and equal / listed by ``--sha256`` and equal / not pinned: recorded in
``{save_dir}/models/teachers.lock`` at its first install and checked against it by every later fetch and by
scripts/verify_teacher.py), its loading (weights-only, strict, architecture) and its accuracy (measured now on the
CIFAR-100 test set when ``--data_folder`` holds it, or downloaded first with ``--check_accuracy``; else "not
measured" and the command that measures it). A teacher near chance or more than 3 points below RepDistiller's
published accuracy is not installed (moved aside, with the reason in its name) unless ``--accept_low_accuracy``.

Nothing the fetch did not create is ever deleted or overwritten: a teacher already in place that fails a check is
left in place and its fetch refused, unless ``--replace`` moves it aside (``ckpt_epoch_240.pth.replaced-REASON-TIME``);
folders a failed fetch created are removed, others are never touched. Every flag, environment variable and list is
checked before the first byte is fetched. Exit 0 when every requested teacher is in place and passed its checks, 1 when
any was not installed, 2 on a usage error.
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
import errno
import os
import shlex
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from core import env
from core.errors import UserError, run_main
from helper.options import OneLineParser, PathKind, check_path
from models.published import low_accuracy_problem
from scripts.verify_teacher import (
    LOADING_CHECKED,
    LOCK_NAME,
    PINS_NAME,
    TEACHERS,
    Status,
    accuracy_fact,
    check_loading,
    cifar_test_folder,
    load_test_set,
    measure_accuracy,
    read_lock,
    read_pins,
    read_sha256_list,
    record_in_lock,
    teacher_file,
)

ORIGINAL_MIRROR = "http://shape2prog.csail.mit.edu/repo"
ARCHIVE_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
ARCHIVE_NAME = "cifar_teachers.tar"
CHECKPOINT = "ckpt_epoch_240.pth"
CHUNK = 1 << 20
BY_HAND = "get it by hand as docs/teachers.md describes"
T = TypeVar("T")

# ------------------------------------------------------------------------------------------- environment variables

# every environment variable of the fetch path, with what it sets (registered, parsed and documented in core/env.py)
FETCH_ENVIRONMENT = {name: f"{env.REGISTRY[name].meaning} ({env.REGISTRY[name].accepted})"
                     for name in ("TEACHER_MIRROR", "TEACHER_MIRRORS", "TEACHER_ARCHIVE_URL", "TEACHER_CONNECT_TIMEOUT")}


@dataclass(frozen=True)
class FetchEnvironment:
    mirrors: tuple[str, ...]
    archive_url: str
    connect_timeout: float


def parse_fetch_environment(environ: Mapping[str, str] | None = None) -> FetchEnvironment:
    """The fetch path's environment variables (FETCH_ENVIRONMENT), each parsed by the project's one registry
    (core/env.py) as a flag would be: a bad value is refused with one sentence naming the variable (UserError)."""
    environ = dict(os.environ if environ is None else environ)
    env.check(FETCH_ENVIRONMENT, environ)
    extra = env.get("TEACHER_MIRROR", environ)
    if "TEACHER_MIRRORS" in environ:
        if extra:
            raise UserError("TEACHER_MIRROR and TEACHER_MIRRORS are both set, and TEACHER_MIRRORS replaces the whole mirror "
                            "list; add the mirror to TEACHER_MIRRORS and unset TEACHER_MIRROR")
        mirrors = tuple(env.get("TEACHER_MIRRORS", environ) or ())
        if not mirrors:
            raise UserError("TEACHER_MIRRORS is set but empty; unset it or list at least one base URL")
    else:
        mirrors = (ORIGINAL_MIRROR, *([extra] if extra else []))
    return FetchEnvironment(mirrors, env.get("TEACHER_ARCHIVE_URL", environ) or ARCHIVE_URL,
                            float(env.get("TEACHER_CONNECT_TIMEOUT", environ)))


# ------------------------------------------------------------------------------------------- the checked invocation


@dataclass
class Plan:
    """One invocation, every input checked: nothing has been fetched or written yet."""

    names: list[str]
    source: str
    save_dir: Path
    data_folder: Path
    env: FetchEnvironment
    pins: dict[str, str]
    lock: dict[str, str]
    sha256_list: Path | None = None
    listed: dict[str, str] = field(default_factory=dict)
    allow_unpinned: set[str] = field(default_factory=set)
    replace: bool = False
    check_accuracy: bool = False
    accept_low_accuracy: bool = False
    keep_archive: bool = False
    dry_run: bool = False

    @property
    def models(self) -> Path:
        return self.save_dir / "models"

    @property
    def lock_path(self) -> Path:
        return self.models / LOCK_NAME

    def dest(self, name: str) -> Path:
        return self.models / teacher_file(name)

    def measure_command(self, name: str) -> str:
        """The command that measures ``name``'s accuracy (downloading CIFAR-100 first when needed)."""
        words = ["sh", "scripts/fetch_pretrained_teachers.sh", "--only", name, "--check_accuracy"]
        if self.save_dir != Path("save"):
            words += ["--save_dir", str(self.save_dir)]
        if self.data_folder != Path("data"):
            words += ["--data_folder", str(self.data_folder)]
        return shlex.join(words)


def _names(values: list[str] | None, flag: str) -> list[str]:
    names: list[str] = []
    for value in values or []:
        for name in value.split(","):
            name = name.strip()
            if name not in TEACHERS:
                what = "an empty name" if not name else f"'{name}'"
                raise UserError(f"{flag} got {what}, not a published teacher; pass one of {', '.join(TEACHERS)}")
            if name not in names:
                names.append(name)
    return names


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = OneLineParser(
        prog="fetch_pretrained_teachers.sh",
        description="Download, check and install the published RepDistiller CIFAR-100 teachers into "
                    "SAVE_DIR/models/NAME_vanilla/ckpt_epoch_240.pth (docs/teachers.md). Environment: "
                    + "; ".join(f"{k}: {v}" for k, v in FETCH_ENVIRONMENT.items())
                    + "; PYTHON: the interpreter that runs this (default .venv/bin/python, else python3).")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"fetch only these teachers (repeatable, or comma-separated; default: all of {', '.join(TEACHERS)})")
    parser.add_argument("--source", choices=("auto", "mirrors", "archive"), default="auto",
                        help="auto: the per-file mirrors, then the release archive for what they did not give; "
                             "mirrors or archive: only that kind (default: auto)")
    parser.add_argument("--sha256", type=PathKind("file", "--sha256"), default=None, metavar="FILE",
                        help="sha256sum-format list that must name every requested teacher; a file whose digest differs "
                             "is refused (the pins of scripts/teachers.sha256 are checked too)")
    parser.add_argument("--save_dir", type=PathKind("output", "--save_dir"), default=Path("save"),
                        help="root folder of the teachers: SAVE_DIR/models/ (default: save)")
    parser.add_argument("--data_folder", type=PathKind("folder", "--data_folder"), default=Path("data"),
                        help="folder holding cifar-100-python/: when its test set is there, every teacher's accuracy is "
                             "measured on it (default: data)")
    parser.add_argument("--check_accuracy", action="store_true",
                        help="download CIFAR-100 into --data_folder first when it is missing, so every accuracy is measured")
    parser.add_argument("--accept_low_accuracy", action="store_true",
                        help="install a teacher whose measured accuracy is near chance or more than 3 points below the "
                             "published one (refused by default)")
    parser.add_argument("--allow_unpinned", action="append", metavar="NAME",
                        help="accept, for this install, a file of NAME whose digest differs from its pin or its lock entry "
                             "(repeatable, or comma-separated); the lock then records the new digest")
    parser.add_argument("--replace", action="store_true",
                        help="move a teacher already in place that fails a check aside (NAME.replaced-REASON-TIME, never "
                             "deleted) and fetch the published one")
    parser.add_argument("--keep_archive", action="store_true",
                        help="keep the release archive this run downloaded even once all six teachers are in place")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true", help="print the URLs that would be tried and exit")
    return parser


def parse_args(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Plan:
    """Every check that needs no network and writes nothing: flags, environment, digest lists, the lock file."""
    opt = build_parser().parse_args(argv)
    names = _names(opt.only, "--only") if opt.only is not None else list(TEACHERS)
    if opt.check_accuracy:  # CIFAR-100 may be downloaded there
        check_path("--data_folder", opt.data_folder, "output")
    plan = Plan(names=names, source=opt.source, save_dir=opt.save_dir, data_folder=opt.data_folder,
                env=parse_fetch_environment(environ), pins=read_pins(), lock={}, sha256_list=opt.sha256,
                replace=opt.replace, check_accuracy=opt.check_accuracy, accept_low_accuracy=opt.accept_low_accuracy,
                keep_archive=opt.keep_archive, dry_run=opt.dry_run)
    if plan.models.is_dir():
        plan.lock = read_lock(plan.models)
    plan.allow_unpinned = set(_names(opt.allow_unpinned, "--allow_unpinned"))
    for name in sorted(plan.allow_unpinned):
        if name not in names:
            raise UserError(f"--allow_unpinned {name} names a teacher this fetch does not fetch; add it to --only or drop it")
        if name not in plan.pins and teacher_file(name) not in plan.lock:
            raise UserError(f"--allow_unpinned {name}: {name} is neither pinned in {PINS_NAME} nor recorded in "
                            f"{plan.lock_path}, so there is nothing to allow; drop it")
    if opt.sha256 is not None:
        plan.listed = read_sha256_list(opt.sha256, "the --sha256 list")
        missing = [name for name in names if name not in plan.listed]
        if missing:
            raise UserError(f"the --sha256 list {opt.sha256} names no digest for {', '.join(missing)} "
                            f"(lines ending in {teacher_file(missing[0])}); add them, or leave them out of --only")
        for name in names:
            listed, pin, locked = plan.listed[name], plan.pins.get(name), plan.lock.get(teacher_file(name))
            for other, where in ((pin, f"{PINS_NAME} pins"), (locked, f"{plan.lock_path} recorded")):
                if other is not None and other != listed and name not in plan.allow_unpinned:
                    raise UserError(f"the --sha256 list {opt.sha256} gives {listed} for {name} but {where} {other}; fix "
                                    f"the list, or pass --allow_unpinned {name} to accept the list's digest for this install")
    return plan


# ------------------------------------------------------------------------------------------- downloads


class DownloadFailed(Exception):
    """A source gave no complete file; the message is one sentence."""


class Restart(Exception):
    """The partial download cannot be continued from this source; the message says why."""


class Refused(Exception):
    """A file failed a check: ``fact`` (digest, loading, low-accuracy) and the reason, in words; ``flag`` accepts it."""

    def __init__(self, fact: str, reason: str, flag: str = "") -> None:
        super().__init__(reason)
        self.fact, self.reason, self.flag = fact, reason, flag


def _write_problem(path: Path, err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"cannot write {path}: the disk is full or a file size limit was reached ({err.strerror}); "
                "free some space or pass another --save_dir")
    return f"cannot write {path} ({err.strerror or err}); make the folder writable or pass another --save_dir"


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total length) of a Content-Range header."""
    spec, _, total = (value or "").partition(" ")[2].partition("/")
    start = spec.partition("-")[0].strip()
    return (int(start) if start.isdigit() else None), (int(total) if total.strip().isdigit() else None)


class _Progress:
    """One progress line: rewritten in place on a terminal, a line per 25% otherwise."""

    def __init__(self, label: str, total: int | None, done: int) -> None:
        self.label, self.total, self.done = label, total, done
        self.tty = sys.stdout.isatty()
        self.last_quarter = 4 * done // total if total else 0
        self.last_time = 0.0

    def update(self, done: int) -> None:
        self.done = done
        if self.tty:
            now = time.monotonic()
            if now - self.last_time >= 0.5 or (self.total and done >= self.total):
                self.last_time = now
                print(f"\r{self.label}: {self._text()}", end="", flush=True)
        elif self.total and 4 * done // self.total > self.last_quarter:
            self.last_quarter = 4 * done // self.total
            print(f"{self.label}: {self._text()}", flush=True)

    def close(self) -> None:
        if self.tty:
            print(flush=True)

    def _text(self) -> str:
        mb = self.done / 1e6
        return f"{mb:.1f} of {self.total / 1e6:.1f} MB ({100 * self.done // self.total}%)" if self.total else f"{mb:.1f} MB"


def download(url: str, part: Path, label: str, timeout: float) -> None:
    """Download ``url`` into ``part``, continuing a partial ``part`` with an HTTP Range request; return once ``part``
    holds every byte the server announced. Raises Restart when ``part`` cannot be continued from this server, and
    DownloadFailed (``part`` kept when it holds bytes, for the next run) on any other failure."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "ckd-fetch-teachers"})
    if have:
        request.add_header("Range", f"bytes={have}-")
        print(f"{label}: resuming {part} ({have} bytes) from {url}", flush=True)
    else:
        print(f"{label}: downloading {url}", flush=True)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - an http(s) URL, checked
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            _, total = _content_range(err.headers.get("Content-Range"))
            if total == have:  # stopped between its last byte and its check: complete as it is
                print(f"{label}: {part} already holds all {have} bytes; checking it as it is", flush=True)
                return
            raise Restart(f"{url} has {total} bytes, fewer than the {have} of {part}") from err
        raise DownloadFailed(f"cannot download {url} (HTTP {err.code} {err.reason})") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise DownloadFailed(f"cannot download {url} ({getattr(err, 'reason', None) or err})") from err
    with response:
        if have and response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != have:
                raise Restart(f"{url} answered the resume request at byte {start}, not {have}")
            mode = "ab"
        else:
            if have:
                print(f"{label}: {url} cannot resume downloads; downloading it from the start", flush=True)
            have = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        done = have
        progress = _Progress(label, total, done)
        try:
            handle = open(part, mode)
        except OSError as err:
            raise DownloadFailed(_write_problem(part, err)) from err
        kept = f"{part} is kept and the next run resumes it"
        try:
            with handle:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (OSError, ValueError) as err:  # connection reset, timeout, IncompleteRead
                        raise DownloadFailed(f"the download of {url} stopped at {done} bytes ({type(err).__name__}: {err}); "
                                             f"{kept}") from err
                    if not block:
                        break
                    try:
                        handle.write(block)
                    except OSError as err:
                        raise DownloadFailed(_write_problem(part, err) + f"; {kept}") from err
                    done += len(block)
                    progress.update(done)
        finally:
            progress.close()
            if part.is_file() and part.stat().st_size == 0:
                part.unlink()
    if total is not None and done != total:
        raise DownloadFailed(f"the download of {url} stopped at {done} of {total} bytes; {kept}")
    if done == 0:
        raise DownloadFailed(f"{url} sent an empty file")


def fetch_with_retry(url: str, part: Path, label: str, timeout: float, accept: Callable[[Path], T]) -> T:
    """The one retry loop: download ``url`` into ``part`` (resuming it), then ``accept(part)``. A partial download that
    cannot be continued, or a resumed file that fails ``accept`` (it may mix two downloads), is downloaded once more
    from the start. ``accept`` raises Refused; a refused file is deleted here unless ``accept`` moved it aside."""
    for attempt in (1, 2):
        resumed = part.is_file() and part.stat().st_size > 0
        try:
            download(url, part, label, timeout)
        except Restart as why:
            part.unlink(missing_ok=True)
            if attempt == 2:
                raise DownloadFailed(f"{why}, twice") from why
            print(f"{label}: {why}; downloading it from the start", flush=True)
            continue
        try:
            return accept(part)
        except Refused as refused:
            part.unlink(missing_ok=True)
            if resumed and attempt == 1 and refused.fact != "low-accuracy":
                print(f"{label}: the resumed download failed its check ({refused.reason}); downloading it once more "
                      "from the start", flush=True)
                continue
            raise
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------- checks and install


def _problem_only(message: str, path: Path) -> str:
    """A check's message about ``path`` as the fetch words it: the file called "it" (a download's temporary name means
    nothing to the reader), without the advice after the first '; ' outside brackets (the fetch gives its own)."""
    depth = 0
    for index, char in enumerate(message):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if depth == 0 and message.startswith("; ", index):
            message = message[:index]
            break
    return message.replace(str(path), "it")


def move_aside(path: Path, reason: str, like: Path | None = None) -> Path:
    """Rename ``path`` to a free name beside it that says why and when (``NAME.REASON-YYYYmmddTHHMMSS``, NAME the name of
    ``like``, default ``path``); never deletes and never overwrites."""
    stamp, base = time.strftime("%Y%m%dT%H%M%S"), (like or path).name
    target, number = path.with_name(f"{base}.{reason}-{stamp}"), 1
    while target.exists() or target.is_symlink():
        number += 1
        target = path.with_name(f"{base}.{reason}-{stamp}-{number}")
    os.rename(path, target)
    return target


def place(temp: Path, dest: Path) -> None:
    """Move a checked ``temp`` to ``dest``, never over an existing file."""
    try:
        os.link(temp, dest)
    except FileExistsError:
        raise UserError(f"{dest} appeared while this fetch ran; it was left as it is") from None
    except OSError:  # a file system without hard links
        if dest.exists():
            raise UserError(f"{dest} appeared while this fetch ran; it was left as it is") from None
        try:
            os.replace(temp, dest)
        except OSError as err:
            raise UserError(_write_problem(dest, err)) from err
        return
    temp.unlink()


class Fetch:
    """One run of a checked :class:`Plan`."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.created: list[Path] = []  # folders this run made, outermost first
        self.test: Any = None  # the CIFAR-100 test set, when present
        self.archive_downloaded = False
        self.archive_used = False

    # -- folders

    def make_folder(self, folder: Path) -> None:
        missing, probe = [], folder
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(_write_problem(folder, err)) from err
        self.created.extend(reversed(missing))

    def remove_empty_created(self) -> None:
        for folder in reversed(self.created):  # innermost first
            try:
                folder.rmdir()
            except OSError:
                pass

    # -- checks

    def _digest_fact(self, name: str, digest: str) -> str:
        plan = self.plan
        pin, listed = plan.pins.get(name), plan.listed.get(name)
        locked = plan.lock.get(teacher_file(name))
        allowed = name in plan.allow_unpinned
        if listed is not None and digest != listed:
            raise Refused("digest", f"its sha256 {digest} is not the {listed} of the --sha256 list {plan.sha256_list}")
        if pin is not None and digest != pin and not allowed:
            raise Refused("digest", f"its sha256 {digest} is not the {pin} pinned in {PINS_NAME}", f"--allow_unpinned {name}")
        if locked is not None and digest != locked and not allowed:
            raise Refused("digest", f"its sha256 {digest} is not the {locked} that {plan.lock_path} recorded at its first install",
                          f"--allow_unpinned {name}")
        if pin is not None and digest == pin:
            return f"digest pinned and equal (sha256 {digest}, {PINS_NAME})"
        if allowed:
            was = f"the pin {pin}" if pin is not None else f"the {locked} recorded before"
            return f"digest differs from {was}, accepted by --allow_unpinned {name}: sha256 {digest} recorded in {plan.lock_path}"
        if listed is not None:
            return f"digest equal to the --sha256 list (sha256 {digest}), not pinned: recorded in {plan.lock_path}"
        if locked is not None:
            return f"digest not pinned, equal to the sha256 {digest} that {plan.lock_path} recorded at its first install"
        return (f"digest not pinned: sha256 {digest} recorded in {plan.lock_path} now (trust on first use: later fetches "
                "and scripts/verify_teacher.py check it)")

    def check(self, name: str, path: Path) -> tuple[Status, str]:
        """The three facts of ``path`` as teacher ``name`` (and its digest); raises Refused at the first failed check."""
        from core.checkpoint import file_sha256

        digest = file_sha256(path)
        digest_fact = self._digest_fact(name, digest)
        try:
            stored = check_loading(name, path)
        except UserError as err:
            raise Refused("loading", _problem_only(str(err), path)) from err
        if self.test is None:
            accuracy = (f"accuracy not measured (no CIFAR-100 test set in {self.plan.data_folder}); measure it with: "
                        f"{self.plan.measure_command(name)}")
        else:
            acc = measure_accuracy(name, path, self.test)
            accuracy = accuracy_fact(name, acc)
            problem = low_accuracy_problem(name, acc)
            if problem:
                if not self.plan.accept_low_accuracy:
                    raise Refused("low-accuracy", f"it scores {problem}", "--accept_low_accuracy")
                accuracy += " (far below it: accepted by --accept_low_accuracy)"
        return Status(digest_fact, LOADING_CHECKED.format(name=name), accuracy, stored), digest

    def record(self, name: str, digest: str) -> None:
        key = teacher_file(name)
        if self.plan.lock.get(key) != digest:
            record_in_lock(self.plan.models, key, digest)
            self.plan.lock[key] = digest

    def candidate(self, name: str, origin: str) -> Callable[[Path], Status]:
        """``accept`` for a downloaded or extracted file of ``name``: check it and install it."""

        def accept(path: Path) -> Status:
            try:
                status, digest = self.check(name, path)
            except Refused as refused:
                if refused.fact == "low-accuracy":
                    aside = move_aside(path, "refused-low-accuracy", like=self.plan.dest(name))
                    refused.reason += f"; it was not installed but moved aside to {aside}"
                raise
            dest = self.plan.dest(name)
            place(path, dest)
            self.record(name, digest)
            print(f"{name}: installed {dest} from {origin}: {status.line()}", flush=True)
            return status

        return accept

    # -- one teacher

    def present(self, name: str) -> bool | None:
        """A teacher already in place: True when it passes every check, False when its fetch is refused, None when
        there is none (or --replace moved it aside)."""
        dest = self.plan.dest(name)
        if not (dest.exists() or dest.is_symlink()):
            return None
        if not dest.is_file():
            print(f"{name}: {dest} is not a regular file; it is left in place and not fetched, move it away or pass "
                  "another --save_dir", file=sys.stderr, flush=True)
            return False
        try:
            status, digest = self.check(name, dest)
        except Refused as refused:
            if not self.plan.replace:
                other = f", or {refused.flag} to accept it" if refused.flag else ""
                print(f"{name}: {dest} is left in place and not fetched: {refused.reason}; pass --replace to move it "
                      f"aside (to {dest.name}.replaced-{refused.fact}-TIME) and fetch the published {name}, or another "
                      f"--save_dir{other}", file=sys.stderr, flush=True)
                return False
            moved = [f"{dest} aside to {move_aside(dest, f'replaced-{refused.fact}').name}"]
            config = dest.parent / "config.json"  # the flags of the teacher train_teacher.py trained there, if any
            if config.is_file():
                moved.append(f"its config.json to {move_aside(config, f'replaced-{refused.fact}').name}")
            print(f"{name}: moved {' and '.join(moved)} (--replace), since {refused.reason}", flush=True)
            return None
        self.record(name, digest)
        print(f"{name}: already in place, not downloaded again: {dest}: {status.line()}", flush=True)
        return True

    def from_mirrors(self, name: str) -> bool:
        dest = self.plan.dest(name)
        try:
            self.make_folder(dest.parent)
        except UserError as err:
            print(f"{name}: {err}", file=sys.stderr, flush=True)
            return False
        part = dest.with_name(dest.name + ".part")
        for base in self.plan.env.mirrors:
            url = f"{base.rstrip('/')}/{teacher_file(name)}"
            try:
                fetch_with_retry(url, part, name, self.plan.env.connect_timeout, self.candidate(name, url))
                return True
            except DownloadFailed as err:
                print(f"{name}: {err}", file=sys.stderr, flush=True)
            except Refused as refused:
                self._refused_download(name, f"the file from {url}", refused)
            except UserError as err:
                print(f"{name}: {err}", file=sys.stderr, flush=True)
        return False

    def _refused_download(self, name: str, what: str, refused: Refused) -> None:
        accept = f"; {refused.flag} accepts it for this install" if refused.flag and refused.fact != "low-accuracy" else ""
        if refused.fact == "low-accuracy":
            accept = f"; {refused.flag} installs it anyway"
        print(f"{name}: {what} was refused: {refused.reason}{accept}", file=sys.stderr, flush=True)

    def archive(self) -> tarfile.TarFile | None:
        """The release archive, downloaded once into the save folder (kept there for the next teacher), opened."""
        plan = self.plan
        path = plan.save_dir / ARCHIVE_NAME
        self.archive_used = True
        if path.exists() and not path.is_file():
            print(f"error: {path} is not a file, so the archive cannot be downloaded there; move it away or pass another "
                  "--save_dir", file=sys.stderr, flush=True)
            return None
        if path.is_file():
            print(f"archive: using {path}, downloaded before", flush=True)
            try:
                return tarfile.open(path, "r:")
            except (tarfile.TarError, OSError, EOFError) as err:
                print(f"error: {path} is not a tar archive ({str(err).splitlines()[0]}); it was there before this fetch "
                      "and is left in place: move it away and run again to download the archive", file=sys.stderr, flush=True)
                return None
        try:
            self.make_folder(plan.save_dir)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            return None

        def accept(part: Path) -> tarfile.TarFile:
            try:
                tar = tarfile.open(part, "r:")
            except (tarfile.TarError, OSError, EOFError) as err:
                raise Refused("archive", f"{plan.env.archive_url} is not a tar archive ({str(err).splitlines()[0]})") from err
            os.replace(part, path)
            self.archive_downloaded = True
            print(f"archive: saved {path} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)
            return tar

        try:
            return fetch_with_retry(plan.env.archive_url, path.with_name(ARCHIVE_NAME + ".part"), "archive",
                                    plan.env.connect_timeout, accept)
        except (DownloadFailed, Refused) as err:
            print(f"error: {err}; set TEACHER_ARCHIVE_URL to a working copy, or {BY_HAND}", file=sys.stderr, flush=True)
            return None

    @staticmethod
    def members(tar: tarfile.TarFile) -> tuple[dict[str, tarfile.TarInfo], str]:
        """The archive's members by name, read header by header (a truncated archive still gives its first members),
        and why the listing ended early ('' when it did not)."""
        members: dict[str, tarfile.TarInfo] = {}
        try:
            while (info := tar.next()) is not None:
                members.setdefault(info.name.removeprefix("./"), info)
        except (tarfile.TarError, OSError, EOFError) as err:
            return members, f" (the archive ends early: {str(err).splitlines()[0]})"
        return members, ""

    def from_archive(self, tar: tarfile.TarFile, listing: tuple[dict[str, tarfile.TarInfo], str], name: str) -> bool:
        member = f"cifar_teachers/{teacher_file(name)}"
        archive = self.plan.save_dir / ARCHIVE_NAME
        members, ends_early = listing
        info = members.get(member)
        damaged = (f"{archive} may be damaged or not mdistiller's (it is kept): delete it and run again to download it "
                   f"afresh, set TEACHER_ARCHIVE_URL to another copy, or {BY_HAND}")
        if info is None:
            print(f"{name}: {archive} has no member {member}{ends_early}; {damaged}", file=sys.stderr, flush=True)
            return False
        if not info.isfile():
            kind = "a link" if info.issym() or info.islnk() else "not a regular file"
            print(f"{name}: member {member} of {archive} is {kind} and was refused; {BY_HAND}", file=sys.stderr, flush=True)
            return False
        dest = self.plan.dest(name)
        try:
            self.make_folder(dest.parent)
            temp = self._extract(tar, info, dest.parent, damaged)
        except UserError as err:
            print(f"{name}: {err}", file=sys.stderr, flush=True)
            return False
        try:
            self.candidate(name, f"member {member} of {archive}")(temp)
            return True
        except Refused as refused:
            self._refused_download(name, f"member {member} of {archive}", refused)
        except UserError as err:
            print(f"{name}: {err}", file=sys.stderr, flush=True)
        finally:
            temp.unlink(missing_ok=True)
        return False

    @staticmethod
    def _extract(tar: tarfile.TarFile, info: tarfile.TarInfo, folder: Path, damaged: str) -> Path:
        """Copy a regular-file member into a new temporary file in ``folder`` (removed again on failure)."""
        source = tar.extractfile(info)
        if source is None:
            raise UserError(f"member {info.name} is not a regular file; {BY_HAND}")
        try:
            fd, name = tempfile.mkstemp(prefix=f".{CHECKPOINT}.", suffix=".tmp", dir=folder)
        except OSError as err:
            raise UserError(_write_problem(folder, err)) from err
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                left = info.size
                while left > 0:
                    try:
                        block = source.read(min(CHUNK, left))
                    except tarfile.ReadError:  # "unexpected end of data"
                        block = b""
                    if not block:
                        raise UserError(f"member {info.name} is truncated (the archive ends {left} bytes before the end "
                                        f"of the member) and was refused; {damaged}")
                    handle.write(block)
                    left -= len(block)
        except OSError as err:
            temp.unlink(missing_ok=True)
            raise UserError(_write_problem(temp, err)) from err
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp

    # -- the run

    def prepare_data(self) -> None:
        """Load the CIFAR-100 test set when present (downloading it first with --check_accuracy), before any teacher."""
        plan = self.plan
        if cifar_test_folder(plan.data_folder) is None:
            if not plan.check_accuracy:
                return
            from dataset.cifar100 import download_cifar100

            print(f"data: downloading CIFAR-100 into {plan.data_folder} for the accuracy check", flush=True)
            download_cifar100(plan.data_folder)
        self.test = load_test_set(plan.data_folder)
        print(f"data: every teacher's accuracy is measured on the CIFAR-100 test set in {plan.data_folder} "
              f"({len(self.test)} images)", flush=True)

    def run(self) -> int:
        plan = self.plan
        self.prepare_data()
        failed: list[str] = []
        todo: list[str] = []
        for name in plan.names:
            state = self.present(name)
            if state is False:
                failed.append(name)
            elif state is None:
                todo.append(name)
        if plan.source != "archive":
            todo = [name for name in todo if not self.from_mirrors(name)]
            if todo and plan.source == "auto":
                print(f"{', '.join(todo)}: no per-file mirror gave a good file; trying the release archive", flush=True)
        if todo and plan.source != "mirrors":
            tar = self.archive()
            if tar is not None:
                with tar:
                    listing = self.members(tar)
                    todo = [name for name in todo if not self.from_archive(tar, listing, name)]
        for name in todo:
            print(f"{name}: not installed: no source gave a file that passed the checks; set TEACHER_ARCHIVE_URL or "
                  f"TEACHER_MIRROR to another copy, {BY_HAND}, or train it: python train_teacher.py --model {name}",
                  file=sys.stderr, flush=True)
        failed += todo
        self.tidy_archive()
        good = len(plan.names) - len(failed)
        print(f"teachers: {good} of {len(plan.names)} in place in {plan.models}, checked as the lines above say", flush=True)
        if failed:
            print(f"error: not in place: {', '.join(n for n in plan.names if n in failed)}", file=sys.stderr, flush=True)
            return 1
        return 0

    def tidy_archive(self) -> None:
        path = self.plan.save_dir / ARCHIVE_NAME
        if not self.archive_used or not path.is_file():
            return
        complete = all(self.plan.dest(name).is_file() for name in TEACHERS)
        if complete and self.archive_downloaded and not self.plan.keep_archive:
            path.unlink()
            print(f"archive: all six teachers are in {self.plan.models}; deleted {path}, which this run downloaded "
                  "(--keep_archive keeps it)", flush=True)
        else:
            print(f"archive: kept {path} ({path.stat().st_size / 1e6:.1f} MB) for the next teacher; delete it when you no "
                  "longer need it", flush=True)


def dry_run(plan: Plan) -> None:
    for name in plan.names:
        dest = plan.dest(name)
        if plan.source != "archive":
            for base in plan.env.mirrors:
                print(f"{name} {base.rstrip('/')}/{teacher_file(name)} -> {dest}")
        if plan.source != "mirrors":
            print(f"{name} {plan.env.archive_url} (member cifar_teachers/{teacher_file(name)}, archive kept as "
                  f"{plan.save_dir / ARCHIVE_NAME}) -> {dest}")


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    if plan.dry_run:
        dry_run(plan)
        return 0
    fetch = Fetch(plan)
    try:
        return fetch.run()
    except KeyboardInterrupt:
        print("stopped: nothing half-written was installed; the same command resumes an interrupted download",
              file=sys.stderr, flush=True)
        return 130
    finally:
        fetch.remove_empty_created()  # a failed teacher leaves no empty {name}_vanilla/ (nor models/, the save folder)


if __name__ == "__main__":
    sys.exit(run_main(main))
