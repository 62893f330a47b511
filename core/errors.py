"""User-facing errors: one sentence on stderr and exit code 2, never a traceback.

Bottom layer (``core/``): imports nothing from the project. Every other folder may import it.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

EXIT_USER_ERROR = 2

T = TypeVar("T")


class UserError(Exception):
    """Bad input from the person running the program.

    The message is one sentence that says what was wrong and what to do about it.
    Entry points catch it, print it on stderr and exit with code 2.
    """


class DataNotFound(UserError):
    """A data set's files are not in the folder a run reads them from, and could not be fetched there.

    The message says where the files were looked for and how to get them, without naming a flag: the caller that
    parsed the flags adds how to point the run at another folder (``helper.options.data_not_found_message``).
    """


def fail(message: str) -> NoReturn:
    """Print ``message`` as a one-line error on stderr and exit with code 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


class Stopped(KeyboardInterrupt):
    """SIGTERM received where no run handles signals yet (SIGINT raises KeyboardInterrupt there)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


def run_main(main: Callable[[], T]) -> T:
    """Call ``main()`` as every entry point does: a :class:`UserError` becomes one stderr line and exit code 2, so does
    an ``OSError`` no call site wrapped (``core.fs.os_error_message``: the path, the errno's meaning, what to do), and
    stdout/stderr never end the command with a traceback (``core.fs.guard_output_streams``: a closed pipe is silenced,
    a full or failing one is said in one line at the end, exit code 2). SIGINT or SIGTERM that no run handles yet
    (while flags are checked and modules imported) become one line and exit code 128 + the signal number (a run
    installs its own handling, :class:`helper.engine.StopRequest`)."""
    from core import fs  # core.fs imports this module

    streams = fs.guard_output_streams()
    code: Any = 0
    try:
        previous = signal.signal(signal.SIGTERM, _raise_stopped)
    except ValueError:  # not the main thread
        previous = None
    try:
        result = main()
        code = result if isinstance(result, int) else 0
        return result
    except UserError as err:
        code = EXIT_USER_ERROR
        fail(str(err))
    except OSError as err:  # a path no call site wrapped: still one sentence, never a traceback
        code = EXIT_USER_ERROR
        fail(fs.os_error_message(err, action="use"))
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        code = 128 + int(signum)
        print(f"received {signal.Signals(signum).name}: stopped", file=sys.stderr, flush=True)
        sys.exit(code)
    except SystemExit as err:
        code = err.code
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for stream in streams:
            stream.flush()
        problem = fs.output_problem(streams[:1])  # stdout: what the command printed is lost (stderr: only warnings)
        if problem is not None and code in (0, None):
            print(f"error: {problem}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
