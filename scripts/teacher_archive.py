#!/usr/bin/env python3
"""Install published CIFAR-100 teachers from mdistiller's release archive (``cifar_teachers.tar``).

    python scripts/teacher_archive.py --save_dir save resnet56 wrn_40_2

``scripts/fetch_pretrained_teachers.sh`` calls this for the teachers its per-file mirrors did not give (or for
all of them with ``--source archive``). The archive is downloaded once into ``{save_dir}/cifar_teachers.tar``
(through ``cifar_teachers.tar.part``, resumed with an HTTP Range request after an interruption) and kept there, so
a teacher fetched later does not download it again; it is deleted once all six teachers are in ``{save_dir}/models``
unless ``--keep_archive`` is given. Each requested member is read by its exact name (only a regular file is
accepted: never a link, and no name from the archive is ever used as a path), written to a temporary file in
``{save_dir}/models/{name}_vanilla/``, checked (SHA-256 against ``scripts/teachers.sha256`` and ``--sha256``, then
``scripts/verify_teacher.py``: weights-only load + strict load into the architecture) and renamed into place, so
``models/`` never holds a half-written file. ``TEACHER_ARCHIVE_URL`` overrides the archive's URL and
``TEACHER_CONNECT_TIMEOUT`` (seconds, default 15) its network timeout.

Exit 0 when every requested teacher is in place, 1 when the archive or any teacher failed (one line each on stderr),
2 on a usage error.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python scripts/teacher_archive.py` without the editable install
    sys.path.insert(0, str(ROOT))

from core import env  # noqa: E402
from core.errors import UserError, run_main  # noqa: E402

ARCHIVE_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
ARCHIVE_NAME = "cifar_teachers.tar"
TEACHERS = ("wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13", "ResNet50")
PINS = ROOT / "scripts" / "teachers.sha256"
CHECKPOINT = "ckpt_epoch_240.pth"
CHUNK = 1 << 20
BY_HAND = "get the teachers by hand as docs/teachers.md describes"


def member_name(name: str) -> str:
    """The archive member of teacher ``name``: ``cifar_teachers/{name}_vanilla/ckpt_epoch_240.pth``."""
    return f"cifar_teachers/{name}_vanilla/{CHECKPOINT}"


def destination(save_dir: Path, name: str) -> Path:
    """Where train_student.py looks for teacher ``name``."""
    return save_dir / "models" / f"{name}_vanilla" / CHECKPOINT


def archive_url() -> str:
    """``$TEACHER_ARCHIVE_URL``, else the mdistiller release archive."""
    return env.get("TEACHER_ARCHIVE_URL") or ARCHIVE_URL


def read_sha256_list(path: Path) -> dict[str, str]:
    """Teacher name -> lower-case SHA-256 from a sha256sum-format file.

    A line counts for teacher NAME when its file name is NAME, NAME.pth, or ends with ``NAME_vanilla/ckpt_epoch_240.pth``
    (so ``cifar_teachers/...``, ``models/...`` and ``save/models/...`` all work); the first such line wins.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the sha256 list {path} ({err}); pass a file written by sha256sum") from err
    found: dict[str, str] = {}
    for line in lines:
        fields = line.split(maxsplit=1)
        if len(fields) < 2 or line.lstrip().startswith("#"):
            continue
        digest, file = fields[0].lower(), fields[1].strip().lstrip("*")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            continue
        for name in TEACHERS:
            want = f"{name}_vanilla/{CHECKPOINT}"
            if file in (name, f"{name}.pth", want) or file.endswith("/" + want):
                found.setdefault(name, digest)
    return found


def _full(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _write_problem(path: Path, err: OSError) -> str:
    if _full(err):
        return (f"cannot write {path}: the disk is full or a file size limit was reached ({err.strerror}); "
                "free some space or pass another --save_dir")
    return f"cannot write {path} ({err.strerror or err}); make the folder writable or pass another --save_dir"


class _Progress:
    """One progress line: rewritten in place on a terminal, a line per 25% otherwise."""

    def __init__(self, total: int | None, done: int) -> None:
        self.total, self.done = total, done
        self.tty = sys.stdout.isatty()
        self.last_quarter = -1 if done == 0 else (4 * done // total if total else 0)
        self.last_time = 0.0

    def update(self, done: int) -> None:
        self.done = done
        if self.tty:
            now = time.monotonic()
            if now - self.last_time >= 0.5 or (self.total and done >= self.total):
                self.last_time = now
                print(f"\rarchive: {self._text()}", end="", flush=True)
        elif self.total:
            quarter = 4 * done // self.total
            if quarter > self.last_quarter:
                self.last_quarter = quarter
                print(f"archive: {self._text()}", flush=True)

    def close(self) -> None:
        if self.tty:
            print(flush=True)

    def _text(self) -> str:
        mb = self.done / 1e6
        if self.total:
            return f"{mb:.1f} of {self.total / 1e6:.1f} MB ({100 * self.done // self.total}%)"
        return f"{mb:.1f} MB"


def download(url: str, archive: Path, timeout: float) -> None:
    """Download ``url`` to ``archive`` through ``archive.part``, resuming a partial ``.part`` with a Range request.

    The ``.part`` becomes ``archive`` only once it holds every byte the server announced; an interrupted
    download keeps its ``.part`` for the next run. Raises :class:`UserError` with one sentence on any failure.
    """
    part = archive.with_name(archive.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "ckd-fetch-teachers"})
    if have:
        request.add_header("Range", f"bytes={have}-")
        print(f"archive: resuming {part} ({have} bytes) from {url}", flush=True)
    else:
        print(f"archive: downloading {url} -> {archive}", flush=True)
    retry = f"run the script again to resume it, or {BY_HAND}"
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URL given by the user or the default
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            total = _total_from_range(err.headers.get("Content-Range"))
            if total == have:  # stopped between its last byte and the rename
                os.replace(part, archive)
                return
            part.unlink(missing_ok=True)
            raise UserError(f"the partial download {part} does not match {url} (HTTP 416); it was deleted, "
                            f"run the script again to download the archive afresh") from err
        raise UserError(f"cannot download the teacher archive from {url} (HTTP {err.code} {err.reason}); "
                        f"set TEACHER_ARCHIVE_URL to a working copy, or {BY_HAND}") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise UserError(f"cannot download the teacher archive from {url} ({reason}); check the network or set "
                        f"TEACHER_ARCHIVE_URL to a working copy, or {BY_HAND}") from err
    with response:
        status = response.status
        if have and status == 206:
            start = _start_from_range(response.headers.get("Content-Range"))
            if start != have:
                raise UserError(f"{url} answered the resume request at byte {start} instead of {have}; delete {part} "
                                "and run the script again")
            total = _total_from_range(response.headers.get("Content-Range"))
            mode = "ab"
        else:
            if have:
                print(f"archive: {url} cannot resume downloads; starting over", flush=True)
            have = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        done = have
        progress = _Progress(total, done)
        try:
            handle = open(part, mode)
        except OSError as err:
            raise UserError(_write_problem(part, err)) from err
        try:
            with handle:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (OSError, ValueError) as err:  # connection reset, timeout, IncompleteRead
                        raise UserError(f"the download of {url} stopped at {done} bytes ({type(err).__name__}: {err}); "
                                        f"{part} is kept, {retry}") from err
                    if not block:
                        break
                    try:
                        handle.write(block)
                    except OSError as err:
                        raise UserError(_write_problem(part, err) + f"; {part} is kept and resumed next time") from err
                    done += len(block)
                    progress.update(done)
        finally:
            progress.close()
    if total is not None and done != total:
        raise UserError(f"the download of {url} stopped at {done} of {total} bytes; {part} is kept, {retry}")
    if done == 0:
        part.unlink(missing_ok=True)
        raise UserError(f"{url} sent an empty file; set TEACHER_ARCHIVE_URL to a working copy, or {BY_HAND}")
    os.replace(part, archive)
    print(f"archive: saved {archive} ({done / 1e6:.1f} MB)", flush=True)


def _total_from_range(value: str | None) -> int | None:
    total = (value or "").rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def _start_from_range(value: str | None) -> int | None:
    spec = (value or "").partition(" ")[2].partition("-")[0].strip()
    return int(spec) if spec.isdigit() else None


def _extract(tar: tarfile.TarFile, info: tarfile.TarInfo, folder: Path) -> tuple[Path, str]:
    """Copy a regular-file member into a new temporary file in ``folder``; return (path, sha256). Removes it on failure."""
    source = tar.extractfile(info)
    if source is None:
        raise UserError(f"member {info.name} is not a regular file; {BY_HAND}")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{CHECKPOINT}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise UserError(_write_problem(folder, err)) from err
    temp = Path(name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as handle:
            left = info.size
            while left > 0:
                try:
                    block = source.read(min(CHUNK, left))
                except tarfile.ReadError:  # "unexpected end of data"
                    block = b""
                except OSError as err:
                    raise UserError(f"cannot read member {info.name} of the archive ({err}); delete the archive and "
                                    "run the script again") from err
                if not block:
                    raise UserError(f"member {info.name} is truncated (the archive ends {left} bytes before the end of "
                                    "the member); refused, delete the archive to download it again")
                handle.write(block)
                digest.update(block)
                left -= len(block)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        temp.unlink(missing_ok=True)
        raise UserError(_write_problem(temp, err)) from err
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp, digest.hexdigest()


def install(names: Iterable[str], save_dir: Path, pins: dict[str, str], required: dict[str, str] | None = None,
            data_folder: Path | None = None, archive: Path | None = None) -> list[str]:
    """Install each of ``names`` from ``archive`` (default ``{save_dir}/cifar_teachers.tar``); return those that failed.

    ``pins`` are digests a member must match when listed; ``required`` (from ``--sha256``) must list every member.
    Prints one line per teacher installed (with its digest) on stdout, one line per failure on stderr.
    """
    archive = archive or save_dir / ARCHIVE_NAME
    names = list(names)
    failed: list[str] = []
    try:
        tar = tarfile.open(archive, "r:")
    except (tarfile.TarError, OSError, EOFError) as err:
        try:
            archive.unlink()
            gone = "it was deleted, run the script again to download it afresh"
        except OSError:
            gone = "delete it and run the script again"
        print(f"error: {archive} is not a tar archive ({str(err).splitlines()[0]}); {gone}", file=sys.stderr, flush=True)
        return names
    with tar:
        members: dict[str, tarfile.TarInfo] = {}
        ends_early = ""
        try:
            while (info := tar.next()) is not None:  # header by header: a truncated archive still gives its first members
                members.setdefault(info.name.removeprefix("./"), info)
        except (tarfile.TarError, OSError, EOFError) as err:
            ends_early = f" (the archive ends early: {str(err).splitlines()[0]})"
        for name in names:
            try:
                line = _install_one(tar, members, name, save_dir, pins, required, data_folder, archive, ends_early)
            except UserError as err:
                print(f"{name}: {err}", file=sys.stderr, flush=True)
                failed.append(name)
            else:
                print(f"{name}: {line}", flush=True)
    return failed


def _install_one(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str, save_dir: Path, pins: dict[str, str],
                 required: dict[str, str] | None, data_folder: Path | None, archive: Path, ends_early: str = "") -> str:
    wanted = member_name(name)
    info = members.get(wanted)
    if info is None:
        raise UserError(f"{archive} has no member {wanted}{ends_early}; delete the archive to download it again, or {BY_HAND}")
    if not info.isfile():
        kind = "a link" if info.issym() or info.islnk() else "not a regular file"
        raise UserError(f"member {wanted} of {archive} is {kind} and was refused; {BY_HAND}")
    dest = destination(save_dir, name)
    created = [folder for folder in (dest.parent.parent, dest.parent) if not folder.exists()]
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(_write_problem(dest.parent, err)) from err
    try:
        return _install_member(tar, info, name, dest, pins, required, data_folder)
    except BaseException:
        for folder in reversed(created):  # a failed teacher leaves no empty folder this run made
            try:
                folder.rmdir()
            except OSError:
                pass
        raise


def _install_member(tar: tarfile.TarFile, info: tarfile.TarInfo, name: str, dest: Path, pins: dict[str, str],
                    required: dict[str, str] | None, data_folder: Path | None) -> str:
    wanted = member_name(name)
    temp, digest = _extract(tar, info, dest.parent)
    try:
        want = pins.get(name)
        if required is not None:
            if name not in required:
                raise UserError(f"the --sha256 list names no digest for {name}_vanilla/{CHECKPOINT}; add it or drop --sha256")
            want = required[name]
            if name in pins and pins[name] != want:
                raise UserError(f"the --sha256 list gives {want} for {name} but {PINS.name} pins {pins[name]}; fix one of them")
        if want is not None and digest != want:
            raise UserError(f"sha256 of member {wanted} is {digest}, not the pinned {want}; refused, nothing was loaded")
        from scripts.verify_teacher import accuracy_report, verify

        verify(name, temp)
        report = accuracy_report(name, temp, data_folder) if data_folder is not None else []
        try:
            os.replace(temp, dest)
        except OSError as err:
            raise UserError(_write_problem(dest, err)) from err
    finally:
        temp.unlink(missing_ok=True)
    for line in report:
        print(f"{name}: {line}", file=sys.stderr if line.startswith("warning") else sys.stdout, flush=True)
    if want is not None:
        return f"saved {dest} (sha256 {digest}, matches the pinned digest)"
    return (f"saved {dest} (sha256 {digest}, not pinned: to pin it add the line '{digest}  {wanted}' to "
            f"scripts/teachers.sha256)")


def build_parser() -> argparse.ArgumentParser:
    from helper.options import OneLineParser, PathKind

    parser: argparse.ArgumentParser = OneLineParser(
        prog="teacher_archive.py", description="Install published teachers from mdistiller's cifar_teachers.tar.")
    parser.add_argument("names", nargs="+", metavar="NAME", choices=TEACHERS, help=f"teacher, one of {', '.join(TEACHERS)}")
    parser.add_argument("--save_dir", type=PathKind("output", "--save_dir"), default="save",
                        help="root folder of the checkpoints (default: save)")
    parser.add_argument("--sha256", type=PathKind("file", "--sha256"), default=None,
                        help="sha256sum-format list that must name every teacher")
    parser.add_argument("--keep_archive", action="store_true", help="keep the archive even once all six teachers are in place")
    parser.add_argument("--data_folder", type=PathKind("folder", "--data_folder"), default=None,
                        help="folder holding cifar-100-python/: report each teacher's test accuracy")
    return parser


def main(argv: list[str] | None = None) -> int:
    opt = build_parser().parse_args(argv)
    env.check(("TEACHER_ARCHIVE_URL", "TEACHER_CONNECT_TIMEOUT"))  # refused before anything is made (core/env.py)
    pins = read_sha256_list(PINS) if PINS.is_file() else {}
    required = read_sha256_list(opt.sha256) if opt.sha256 is not None else None
    save_dir: Path = opt.save_dir
    archive = save_dir / ARCHIVE_NAME
    if archive.is_file():
        print(f"archive: using {archive}, downloaded before (delete it to download it again)", flush=True)
    else:
        made = not save_dir.exists()
        try:
            save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(_write_problem(save_dir, err)) from err
        timeout = env.get("TEACHER_CONNECT_TIMEOUT")
        try:
            download(archive_url(), archive, timeout)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            if made and not any(save_dir.iterdir()):
                save_dir.rmdir()
            return 1
    failed = install(opt.names, save_dir, pins, required, opt.data_folder, archive)
    if all(destination(save_dir, name).is_file() for name in TEACHERS) and not opt.keep_archive:
        archive.unlink(missing_ok=True)
        print(f"archive: all six teachers are in {save_dir / 'models'}; deleted {archive} (--keep_archive keeps it)", flush=True)
    elif archive.is_file():
        print(f"archive: kept {archive} ({archive.stat().st_size / 1e6:.1f} MB) for the next teacher; delete it when you "
              "no longer need it", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
