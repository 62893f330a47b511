"""The one checked place of file-system errors: every ``OSError`` of a path the project reads or writes becomes one
sentence that names the path, what the operating system said (``os.strerror``) and what to do about that kind of
error; a closed or full standard output never ends a command with a traceback.

* :func:`os_error_message` words an ``OSError`` (advice per errno: :data:`ADVICE`);
* :func:`checked` is the context manager every read or write of a path runs in (it raises :class:`UserError`);
* :func:`read_bytes`, :func:`read_text`, :func:`make_folder`, :func:`write_text` are the common operations run in it;
* :func:`kind_of` / :func:`require_regular_file` name what a path is when it is not a regular file (a FIFO, a device:
  reading one would block or return nothing, so it is refused, never called "missing");
* :func:`guard_output_streams` wraps stdout/stderr for the entry points (``core.errors.run_main``): a closed pipe
  (``| head -n 1``) silences the stream and the command goes on, any other write error (``> /dev/full``) is said in
  one sentence when the command ends, with exit code 2.

Bottom layer: imports nothing from the project but ``core.errors``.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from core.errors import UserError

NAME_MAX = 255  # bytes per path component on the file systems a run writes to (ext4, xfs, btrfs, tmpfs, APFS)

_SPACE = "free some space on that disk or choose another location"
_PERMISSION = "check its permissions (ls -ld) and those of the folders above it, or choose another location"
# what to do, per errno (the operating system's own words, os.strerror, say what happened)
ADVICE: dict[int, str] = {
    errno.ENOSPC: _SPACE,
    errno.EDQUOT: "your disk quota is used up; " + _SPACE,
    errno.EFBIG: "the file is larger than that file system allows; choose a location on another disk",
    errno.EACCES: _PERMISSION,
    errno.EPERM: _PERMISSION,
    errno.EROFS: "that file system is mounted read-only; choose a location on a writable one",
    errno.ENAMETOOLONG: f"a name in the path is longer than the {NAME_MAX} bytes a file system allows; choose a "
                        "shorter path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose a path below a folder",
    errno.EISDIR: "it is a folder, not a file; pass a file",
    errno.ELOOP: "the path runs through a loop of symbolic links; fix or remove the link",
    errno.ENOENT: "check the path (a folder above it may be missing)",
    errno.EEXIST: "something is already there; move it aside or choose another location",
    errno.ENOTEMPTY: "the folder is not empty; move it aside or choose another location",
    errno.EMFILE: "this process has too many open files; raise the limit (ulimit -n) and rerun",
    errno.ENFILE: "the system has too many open files; close some programs and rerun",
    errno.EIO: "the disk reported an input/output error; check the disk (dmesg) or choose another location",
    errno.ENXIO: "it is a device or FIFO nobody serves; pass a regular file",
    errno.ENODEV: "it is a device that cannot be used this way; pass a regular file",
    errno.ESPIPE: "it is a pipe or device, not a regular file; pass a regular file",
    errno.EPIPE: "it is a pipe whose reader has gone; pass a regular file",
    errno.ETXTBSY: "a running program holds it; stop that program or choose another location",
    errno.EBUSY: "the file or device is in use; stop what uses it or choose another location",
    errno.EXDEV: "a file cannot be moved across file systems here; keep the files on one disk",
    errno.EINVAL: "the file system refused the name or the operation; choose another location",
    errno.ESTALE: "the network file system lost the file; remount it or choose a local location",
}
if hasattr(errno, "ENOTSUP"):
    ADVICE.setdefault(errno.ENOTSUP, "that file system does not support this operation; choose a location on another disk")
DEFAULT_ADVICE = "check the path and try again"


def show_path(path: str | os.PathLike | None) -> str:
    """``path`` as the project's messages write it: a name over :data:`NAME_MAX` bytes is shortened, with its length."""
    text = os.fsdecode(path) if path is not None else "?"
    parts = []
    for part in text.split(os.sep):
        size = len(os.fsencode(part))
        parts.append(f"{part[:24]}...({size} bytes)" if size > NAME_MAX else part)
    return os.sep.join(parts)


def os_error_message(err: OSError, path: str | os.PathLike | None = None, action: str | None = "read",
                     fix: str | None = None, note: str = "", location: str = "location") -> str:
    """One sentence for ``err`` raised while doing ``action`` ("read", "write", "create the folder") on ``path``
    (default: the path the error names): ``could not write PATH (No space left on device); free some space ...``.

    ``fix`` replaces the advice for this errno (a caller that knows the flag to change says so); ``note`` goes before
    the advice ("the previous file there is unchanged"); ``location`` is what the user changes to choose another one
    ("--save_dir").
    """
    code = err.errno
    target = path if path is not None else err.filename
    meaning = os.strerror(code) if code else (err.strerror or str(err) or type(err).__name__)
    if code and err.strerror and err.strerror.startswith(meaning):  # the meaning with what we found (mkdirs)
        meaning = err.strerror
    where = f" {show_path(target)}" if target is not None else ""
    if err.filename2 is not None and path is None:
        where += f" to {show_path(err.filename2)}"
    if code == errno.ENOENT and err.filename is not None and path is not None and os.fsdecode(err.filename) != os.fsdecode(path):
        meaning += f": {show_path(err.filename)}"
    advice = fix or ADVICE.get(code or -1, DEFAULT_ADVICE).replace("another location", f"another {location}")
    if target is None:  # the operating system named no file (a write on an open file, a socket)
        return f"a file operation failed ({meaning}); {note + ', ' if note else ''}{advice}"
    if action is None:  # a path flag's check: "PATH cannot be used (reason); advice"
        return f"{where.strip()} cannot be used ({meaning}); {note + ', ' if note else ''}{advice}"
    return f"could not {action}{where} ({meaning}); {note + ', ' if note else ''}{advice}"


class PathError(UserError):
    """An ``OSError`` of a path, as one sentence (:func:`os_error_message`); the original error is its ``__cause__``."""


@contextmanager
def checked(path: str | os.PathLike | None, action: str = "read", fix: str | None = None,
            note: str = "", location: str = "location", within: str | os.PathLike | None = None) -> Iterator[None]:
    """Run the block; an ``OSError`` in it becomes :class:`PathError` naming ``path`` (None: the file the error names,
    else the folder ``within``), the errno's meaning and advice (``fix``, ``note``, ``location``: as
    :func:`os_error_message`)."""
    try:
        yield
    except OSError as err:
        if path is None and err.filename is None and within is not None:
            path, action = within, f"{action} into"
        raise PathError(os_error_message(err, path, action, fix, note, location)) from err


def read_bytes(path: str | os.PathLike, what: str = "") -> bytes:
    """The bytes of the regular file ``path`` (``what`` names it in messages: "the teacher checkpoint")."""
    require_regular_file(path, what)
    with checked(path, "read"):
        return Path(path).read_bytes()


def read_text(path: str | os.PathLike, what: str = "", encoding: str = "utf-8") -> str:
    """The text of the regular file ``path``."""
    require_regular_file(path, what)
    with checked(path, "read"):
        return Path(path).read_text(encoding=encoding)


def make_folder(path: str | os.PathLike, location: str = "location") -> None:
    """``mkdir -p path``, checked (``location``: the flag that chooses another place, as :func:`os_error_message`)."""
    with checked(path, "create the folder", location=location):
        mkdirs(path)


def mkdirs(path: str | os.PathLike) -> None:
    """``mkdir -p path``; a file (or FIFO, device) in the way is ENOTDIR naming it, not pathlib's "File exists"."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        for probe in (Path(path), *Path(path).parents):
            kind = kind_of(probe)
            if kind is not None and kind != "a folder":
                raise NotADirectoryError(errno.ENOTDIR, f"{os.strerror(errno.ENOTDIR)}: {probe} is {kind}",
                                         os.fspath(path)) from None
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename).

    If the write fails (disk full, permissions), the previous file at ``path`` is untouched
    and the temporary file is removed.
    """
    path = Path(path)
    mkdirs(path.parent)  # an OSError here and below: the callers word it (checked)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes, location: str = "location") -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write_bytes`), checked: a failed write leaves the previous
    file unchanged and no temporary file, and says why in one sentence."""
    with checked(path, "write", note="the previous file there is unchanged", location=location):
        atomic_write_bytes(path, data)


def write_text(path: str | os.PathLike, text: str, location: str = "location", encoding: str = "utf-8") -> None:
    """:func:`write_bytes` of ``text``."""
    write_bytes(path, text.encode(encoding), location)


@contextmanager
def atomic_writer(path: str | os.PathLike, binary: bool = False, location: str = "location",
                  encoding: str = "utf-8") -> Iterator[Any]:
    """A file object for ``path`` (text with ``newline=""``, as csv wants, or binary) whose contents are written by
    :func:`write_bytes` when the block ends without an exception (never a half-written file)."""
    buffer: Any = io.BytesIO() if binary else io.StringIO(newline="")
    yield buffer
    data = buffer.getvalue()
    write_bytes(path, data if binary else data.encode(encoding), location)


@contextmanager
def removing_new_folders(path: str | os.PathLike) -> Iterator[None]:
    """Run the block; when it fails, remove the folders of ``path`` (itself and its parents) that did not exist
    before it and are empty again, so that a refused write leaves nothing new behind."""
    path = Path(path)
    new = [p for p in (path, *path.parents) if kind_of(p) is None]  # innermost first
    try:
        yield
    except BaseException:
        for folder in new:
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def kind_of(path: str | os.PathLike) -> str | None:
    """What ``path`` is, in words ("a regular file", "a folder", "a FIFO", "a character device", ...); None when
    nothing is there. A path that cannot be examined raises :class:`PathError`."""
    with checked(path, "examine"):
        try:
            mode = os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


# errnos of the local disk (as opposed to the network) while a download writes its file
LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
                          errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.ELOOP})


def is_local_error(err: OSError) -> bool:
    """True for an error of a file on this machine (disk full, permissions), not of a connection."""
    return err.errno in LOCAL_ERRNOS


def existing_ancestor(path: str | os.PathLike) -> Path:
    """``path`` or its nearest parent that exists (what a folder still to be made would be made in)."""
    probe = Path(path)
    while kind_of(probe) is None and probe != probe.parent:
        probe = probe.parent
    return probe


def check_name_lengths(path: str | os.PathLike) -> None:
    """Raise ``OSError(ENAMETOOLONG)`` for a ``path`` with a name over :data:`NAME_MAX` bytes (a folder still to be
    created: the operating system would refuse it only at mkdir)."""
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), os.fspath(path))


def read_only_mount(path: str | os.PathLike) -> bool:
    """True when ``path`` lies on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def require_regular_file(path: str | os.PathLike, what: str = "") -> None:
    """Refuse a ``path`` that exists but is not a regular file (a FIFO would block a read forever, /dev/null reads as
    empty); a missing one is left to the caller's own message."""
    kind = kind_of(path)
    if kind not in (None, "a regular file"):
        label = f"{what} " if what else ""
        if kind == "a folder":
            raise UserError(f"{label}{show_path(path)} is a folder, not a file; pass the file inside it")
        raise UserError(f"{label}{show_path(path)} is {kind}, not a regular file; pass a regular file")


# ------------------------------------------------------------------------------------------------ standard streams
class GuardedStream:
    """A text stream (stdout or stderr) whose write errors never raise: a closed pipe (EPIPE) silences it, any other
    error (ENOSPC of ``> /dev/full``, EIO) is remembered and said once the command ends (:func:`output_problem`)."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self._stream, self._name = stream, name
        self.error: OSError | None = None

    def _fail(self, err: OSError) -> None:
        if self.error is None:
            self.error = err
        try:  # point the descriptor at /dev/null so that Python's own flush at exit finds nothing to complain about
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, text: str) -> int:
        if self.error is not None:
            return len(text)
        try:
            written = self._stream.write(text)
            if "\n" in text:
                self._stream.flush()  # line by line: the error surfaces here, not at interpreter exit
            return written
        except OSError as err:
            self._fail(err)
            return len(text)

    def flush(self) -> None:
        if self.error is not None:
            return
        try:
            self._stream.flush()
        except OSError as err:
            self._fail(err)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_output_streams() -> tuple[GuardedStream, GuardedStream]:
    """Replace ``sys.stdout`` and ``sys.stderr`` by :class:`GuardedStream` wrappers (once); returns them."""
    streams = []
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if not isinstance(current, GuardedStream):
            current = GuardedStream(current, name)
            setattr(sys, name, current)
        streams.append(current)
    return streams[0], streams[1]


def output_problem(streams: tuple[GuardedStream, ...]) -> str | None:
    """The sentence for a standard stream that could not be written (a closed pipe is not a problem: the reader had
    seen enough), or None."""
    for stream in streams:
        err = stream.error
        if err is not None and err.errno != errno.EPIPE:
            meaning = os.strerror(err.errno) if err.errno else str(err)
            return (f"could not write the output to {stream._name} ({meaning}); send {stream._name} to a file on a "
                    "disk with room to see what the command printed")
    return None
