"""Every environment variable the project reads, in one registry, parsed with the same checks as a flag.

Each :class:`Variable` says what it means, who reads it, what it accepts and its default. :func:`get` is the only way
the project reads one: a value it does not accept is refused with one sentence that names the variable, the value and
what is accepted (:class:`EnvError`, a ``UserError``: exit code 2 from the command line). An unset or empty variable
takes its default. Numeric variables use :class:`core.numbers.Number`, the type of every numeric flag, so
``CIFAR100_TIMEOUT=abc`` and ``--epochs abc`` are refused in the same words.

The table of docs/reliability.md is :func:`markdown_table` (``python -m core.env --table`` prints it;
``tests/test_env.py`` checks that the page holds it). ``python -m core.env [NAME ...]`` checks the variables set in
the environment (all, or the names given): one ``error:`` line and exit code 2 for the first one refused (the shell
scripts can call it before they use one).

Bottom layer: imports nothing from the project but ``core.errors``, ``core.fs`` and ``core.numbers``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from core import fs
from core.errors import UserError
from core.numbers import Number


class EnvError(UserError):
    """An environment variable holds a value the project does not accept."""


@dataclass(frozen=True)
class Variable:
    """One environment variable: ``parse`` turns its text into a value or raises ``ValueError`` /
    ``argparse.ArgumentTypeError`` whose message reads after the name (``must be ..., got X``)."""

    name: str
    meaning: str
    accepted: str  # what it accepts, in words: the end of the refusal ("set it to ACCEPTED, or unset it")
    default: Any  # taken when unset or empty (None: no value)
    readers: tuple[str, ...]  # the files that read it
    parse: Callable[[str], Any]

    @property
    def is_path(self) -> bool:
        """A file or folder path (its wrong values are paths, not words)."""
        return self.parse in (_folder, _program)


def _number(kind: type, **limits: Any) -> Callable[[str], Any]:
    number = Number(kind, **limits)
    return lambda text: number(text.strip())


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        url = urlparse(text.strip())
        if url.scheme not in schemes or not (url.netloc or (url.scheme == "file" and url.path)):
            raise ValueError(f"must be an {' or '.join(s + '://' for s in schemes)} URL, got '{text}'")
        return text.strip()
    return parse


def _urls(*schemes: str) -> Callable[[str], list[str]]:
    one = _url(*schemes)

    def parse(text: str) -> list[str]:
        parts = text.split()
        if not parts:
            raise ValueError("must list at least one URL, got only spaces")
        return [one(part) for part in parts]
    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got '{text}'")
        return value
    return parse


def _pattern(regex: str, words: str) -> Callable[[str], str]:
    compiled = re.compile(regex)

    def parse(text: str) -> str:
        if not compiled.fullmatch(text):
            raise ValueError(f"must be {words}, got '{text}'")
        return text
    return parse


def _anything(text: str) -> str:
    return text


def _folder(text: str) -> str:
    """A folder, existing or to be made: never a file or a device, nor below one, no name over 255 bytes (the checks
    of a ``folder`` path flag)."""
    try:
        fs.check_name_lengths(text)
        kind = fs.kind_of(text)
        probe = fs.existing_ancestor(text)
        base = fs.kind_of(probe)
    except (OSError, UserError) as err:
        raise ValueError(f"must be a folder path that can be used ({getattr(err, 'strerror', None) or err})") from None
    if kind not in (None, "a folder"):
        raise ValueError(f"must be a folder, not {kind}")
    if base not in (None, "a folder"):
        raise ValueError(f"must be a folder path, but {probe} is {base}")
    return text


def _program(text: str) -> str:
    """An executable file, or the name of one on PATH."""
    import shutil

    if shutil.which(text) is None:
        raise ValueError(f"must be an executable Python interpreter (a path, or a name on PATH), got '{text}'")
    return text


def _words(*allowed: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        words = text.split()
        wrong = [w for w in words if w not in allowed]
        if not words or wrong:
            raise ValueError(f"must be some of {' '.join(allowed)} separated by spaces, got '{text}'")
        return words
    return parse


# W&B refuses these characters in project, entity and run names (and ids), and names over 128 characters
_WANDB_NAME = _pattern(r"[^/\\#?%:\s][^/\\#?%:]{0,127}", "a W&B name of at most 128 characters without / \\ # ? % :")
SECONDS = dict(low=0, low_open=True, high=86400)  # a timeout: above 0 and at most a day

VARIABLES: tuple[Variable, ...] = (
    Variable("CIFAR100_URL", "where CIFAR-100 is downloaded from when --data_folder lacks it",
             "an http://, https:// or file:// URL of cifar-100-python.tar.gz", None, ("dataset/cifar100.py",),
             _url("http", "https", "file")),
    Variable("CIFAR100_MD5", "the md5 the downloaded CIFAR-100 archive must have (with CIFAR100_URL)",
             "32 hexadecimal digits", None, ("dataset/cifar100.py",), _pattern(r"[0-9a-fA-F]{32}", "32 hexadecimal digits")),
    Variable("CIFAR100_TIMEOUT", "seconds the CIFAR-100 download waits for the server",
             "a number of seconds above 0 and at most 86400", 30.0, ("dataset/cifar100.py",), _number(float, **SECONDS)),
    Variable("CKD_CHECKPOINT_EVERY_S", "seconds between two writes of a student's last.pth (0: after every pseudo-epoch)",
             "a number of seconds, 0 or more", 60.0, ("helper/student_trainer.py",), _number(float, low=0)),
    Variable("TEACHER_ARCHIVE_URL", "where scripts/fetch_pretrained_teachers.sh downloads the teacher archive from",
             "an http://, https:// or file:// URL of cifar_teachers.tar", None,
             ("scripts/fetch_teachers.py",), _url("http", "https", "file")),
    Variable("TEACHER_CONNECT_TIMEOUT", "seconds a teacher download waits for the server",
             "a number of seconds above 0 and at most 86400", 15.0,
             ("scripts/fetch_teachers.py",), _number(float, **SECONDS)),
    Variable("TEACHER_MIRROR", "one more base URL the teacher fetch tries after the published one",
             "an http:// or https:// URL", None, ("scripts/fetch_teachers.py",), _url("http", "https")),
    Variable("TEACHER_MIRRORS", "the base URLs the teacher fetch tries, replacing the published list",
             "http:// or https:// URLs separated by spaces", None, ("scripts/fetch_teachers.py",),
             _urls("http", "https")),
    Variable("PYTHON", "the interpreter the shell scripts run", "an executable Python interpreter (a path, or a name on "
             "PATH)", None, ("scripts/fetch_pretrained_teachers.sh", "benchmarks/gpu_check.sh"), _program),
    Variable("OUT", "the folder benchmarks/gpu_check.sh writes gpu_check.json, gpu_check.md and the logs to", "a folder path",
             "./gpu_check_out", ("benchmarks/gpu_check.sh",), _folder),
    Variable("GPU_CHECK_DEVICE", "the device of the GPU measurement", "cuda, cuda:N or cpu", "cuda",
             ("benchmarks/gpu_check.sh",), _pattern(r"cpu|cuda(:[0-9]+)?", "cuda, cuda:N or cpu")),
    Variable("GPU_CHECK_TINY", "tiny models and sizes in the GPU measurement (as --dry-run)", "0 or 1", "0",
             ("benchmarks/gpu_check.sh",), _choice("0", "1")),
    Variable("GPU_CHECK_BUDGET_S", "seconds of steps the GPU measurement may spend", "a whole number of seconds from 1 "
             "to 86400", "450 (240 with --dry-run)", ("benchmarks/gpu_check.sh",), _number(int, low=1, high=86400)),
    Variable("GPU_CHECK_ONLY", "the steps of the GPU measurement to run", "some of bench e2e determinism sweep digits "
             "compile, separated by spaces", "all six", ("benchmarks/gpu_check.sh",),
             _words("bench", "e2e", "determinism", "sweep", "digits", "compile")),
    Variable("GPU_CHECK_SWEEP_EPOCHS", "pseudo-epochs of each concurrent run of the GPU measurement's sweep step",
             "a whole number from 1 to 10000", "20 (2 with --dry-run)", ("benchmarks/gpu_check.sh",),
             _number(int, low=1, high=10000)),
    Variable("GPU_CHECK_WORK", "the work folder of the GPU measurement (kept)", "a folder path", "a new temporary folder",
             ("benchmarks/gpu_check.sh",), _folder),
    Variable("GPU_CHECK_KEEP_WORK", "keep the temporary work folder of the GPU measurement", "0 or 1", "0",
             ("benchmarks/gpu_check.sh",), _choice("0", "1")),
    Variable("WANDB_MODE", "W&B logging: online, offline or disabled (unset: online when a key and the server are "
             "there, else offline)", "online, offline, disabled (W&B's aliases dryrun and run too)", None,
             ("helper/logger.py",), _choice("online", "offline", "disabled", "dryrun", "run")),
    Variable("WANDB_BASE_URL", "the W&B server (probed for 3 s before logging online)", "an http:// or https:// URL",
             "https://api.wandb.ai", ("helper/logger.py",), _url("http", "https")),
    Variable("WANDB_API_KEY", "the W&B key (only whether one is set is read here; W&B checks it)",
             "any value (a wrong key is W&B's to refuse: the run goes on without W&B, said in one line)", None,
             ("helper/logger.py",), _anything),
    Variable("WANDB_PROJECT", "the W&B project when --wdb_project is not given", "a W&B name of at most 128 characters "
             "without / \\ # ? % :", None, ("helper/logger.py",), _WANDB_NAME),
    Variable("WANDB_ENTITY", "the W&B entity when --wdb_entity is not given", "a W&B name of at most 128 characters "
             "without / \\ # ? % :", None, ("helper/logger.py",), _WANDB_NAME),
    Variable("WANDB_SWEEP_ID", "set by `wandb agent`: this process runs for a W&B sweep", "a W&B id (letters, digits, "
             "- and _)", None, ("helper/logger.py",), _pattern(r"[A-Za-z0-9_-]{1,128}", "a W&B id (letters, digits, - and _)")),
    Variable("WANDB_RUN_ID", "set by `wandb agent`: the W&B run this process logs to", "a W&B id (letters, digits, - "
             "and _)", None, ("helper/logger.py",), _pattern(r"[A-Za-z0-9_-]{1,128}", "a W&B id (letters, digits, - and _)")),
)
REGISTRY: dict[str, Variable] = {variable.name: variable for variable in VARIABLES}
# read by the Python of a student or teacher run (checked when it starts, before any file is read or written)
RUN_VARIABLES = tuple(v.name for v in VARIABLES if set(v.readers) & {"dataset/cifar100.py", "helper/student_trainer.py",
                                                                      "helper/logger.py"})


def get(name: str, environ: dict[str, str] | None = None) -> Any:
    """The value of the registered variable ``name`` (its default when unset or empty); raises :class:`EnvError`
    with one sentence when the value is not accepted."""
    variable = REGISTRY[name]  # KeyError: a variable read without being registered (tests/test_env.py looks for them)
    text = (os.environ if environ is None else environ).get(name)
    if text is None or text.strip() == "":
        return variable.default
    try:
        return variable.parse(text)
    except (ValueError, argparse.ArgumentTypeError) as err:
        why = str(err).replace(f", got '{text}'", "").replace(f", got '{text.strip()}'", "")
        fix = "correct it" if variable.accepted in why else f"set it to {variable.accepted}"
        raise EnvError(f"the environment variable {name}={fs.show_path(text)!r} is refused: it {why}; {fix}, or unset it"
                       f"{_default_words(variable)}") from None


def _default_words(variable: Variable) -> str:
    return "" if variable.default is None else f" for the default, {variable.default:g}" \
        if isinstance(variable.default, float) else f" for the default, {variable.default}"


def check(names: Iterable[str] | None = None, environ: dict[str, str] | None = None) -> None:
    """Parse every variable of ``names`` (default: all registered) that is set; the first refused raises."""
    for name in REGISTRY if names is None else names:
        get(name, environ)


def markdown_table() -> str:
    """The table of docs/reliability.md: every variable, what it means, what it accepts, its default, who reads it."""
    lines = ["| variable | meaning | accepted | default | read by |", "|---|---|---|---|---|"]
    for v in VARIABLES:
        default = "" if v.default is None else f"`{v.default:g}`" if isinstance(v.default, float) else f"`{v.default}`"
        readers = ", ".join(f"`{r}`" for r in v.readers)
        lines.append(f"| `{v.name}` | {v.meaning} | {v.accepted} | {default or 'unset'} | {readers} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m core.env [--table] [NAME ...]``: print the table, or check the variables set (exit code 2 with one
    ``error:`` line for the first one refused)."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--table"]:
        print(markdown_table())
        return 0
    unknown = [name for name in args if name not in REGISTRY]
    if unknown:
        raise UserError(f"{unknown[0]} is not an environment variable the project reads; pass one of "
                        f"{', '.join(REGISTRY)}")
    check(args or None)
    return 0


if __name__ == "__main__":
    from core.errors import run_main

    sys.exit(run_main(main))
