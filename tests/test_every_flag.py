"""Every flag of every entry point, walked from its parser: each numeric flag gets a negative, zero, NaN, infinite and
huge value, each path flag a missing path, a directory, a file and a place nobody can write; each value either passes
every check the script makes before any work, or is refused with exactly one ``error:`` line (exit 2), and nothing is
left behind. The walk is in-process, through the same functions the scripts call before any work; a handful of real
commands run as subprocesses. ``BAD_INPUT_ROWS`` is the "Checked per flag" table of docs/reliability.md (regenerate it
with ``python -m tests.test_every_flag``)."""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks import bench, parity
from core.errors import UserError
from helper import method_table
from helper.config import StudentConfig, parse_student_args, parse_teacher_args
from helper.options import (
    CONFIG_PATH_KINDS,
    INT64_MAX,
    SEED,
    Number,
    PathKind,
    build_student_parser,
    build_teacher_parser,
    str2bool,
)
from scripts import export_cifar_format, fetch_teachers, summarize, sweep, verify_teacher
from tests.conftest import ROOT

NUMERIC_VALUES = ("-1", "0", "nan", "inf", "-inf", "1e300", str(2**64))
ALWAYS_REFUSED = ("nan", "inf", "-inf")
PATH_VALUES = ("missing", "directory", "file", "unwritable")
# a flag whose name says it is a path must have a kind (PathKind, or CONFIG_PATH_KINDS for the configurations)
PATH_NAME = re.compile(r"(dir|folder|path|^out$|file|sha256|^published$|^project$|^wandb$)")


def _sweep_file(tmp: Path) -> Path:
    path = tmp / "s.yml"
    path.write_text("program: train_student.py\nmethod: grid\nparameters:\n  seed: {value: 1}\n", encoding="utf-8")
    return path


def _fixtures(tmp: Path) -> None:
    (tmp / "runs").mkdir(exist_ok=True)
    (tmp / "adir").mkdir(exist_ok=True)
    (tmp / "afile").write_text("a file\n")
    (tmp / "ckpt.pth").write_text("not checked before its load\n")
    _sweep_file(tmp)


# entry point -> (its parser, what the script runs before any work, a valid command line in the tmp folder)
def _entry_points(tmp: Path) -> dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[list[str]], Any], list[str]]]:
    return {
        "train_student.py": (build_student_parser, parse_student_args, ["--device", "cpu", "--model_t", "resnet8"]),
        "train_teacher.py": (build_teacher_parser, parse_teacher_args, ["--device", "cpu"]),
        "bench.py": (bench.build_parser, bench.check_args, ["--device", "cpu"]),
        "summarize.py": (summarize.build_parser, summarize.parse_args, [str(tmp / "runs")]),
        "sweep.py": (sweep.build_parser, sweep.main, [str(tmp / "s.yml"), "--dry-run"]),
        "parity.py": (parity.build_parser, parity.parse_args,
                      ["--data_folder", str(tmp / "data"), "--path_t", str(tmp / "t" / "resnet20_vanilla" / "ckpt.pth"),
                       "--out", str(tmp / "out"), "--sides", "project"]),
        "export_cifar_format.py": (export_cifar_format.build_parser, lambda argv: export_cifar_format.build_parser().parse_args(argv),
                                   ["--out", str(tmp / "out")]),
        "verify_teacher.py": (verify_teacher.build_parser, lambda argv: verify_teacher.build_parser().parse_args(argv),
                              ["resnet8", str(tmp / "ckpt.pth")]),
        "fetch_teachers.py": (fetch_teachers.build_parser, fetch_teachers.parse_args, ["--only", "resnet56"]),
    }


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def outcome(validate: Callable[[list[str]], Any], argv: list[str]) -> str | None:
    """None when ``argv`` passes, else the one ``error:`` line it is refused with (exit 2, one line, checked)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            validate(argv)
    except SystemExit as err:
        assert err.code == 2, (argv, err.code)
        lines = stderr.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, lines)
        return lines[0]
    except UserError as err:
        assert "\n" not in str(err), (argv, str(err))
        return f"error: {err}"
    return None


def _path_value(tmp: Path, which: str) -> str:
    return {"missing": str(tmp / "missing" / "x"), "directory": str(tmp / "adir"), "file": str(tmp / "afile"),
            "unwritable": str(tmp / "afile" / "below")}[which]  # below a file: unwritable for root too


def _path_kind(entry: str, action: argparse.Action) -> str | None:
    if isinstance(action.type, PathKind):
        return action.type.kind
    if entry in ("train_student.py", "train_teacher.py", "bench.py"):
        return CONFIG_PATH_KINDS.get(action.dest)
    return None


def _snapshot(tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))


def test_every_flag_of_every_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the relative defaults (./save, ./data) land here, where the snapshot sees them
    _fixtures(tmp_path)
    before = _snapshot(tmp_path)
    walked = 0
    for entry, (build, validate, base) in _entry_points(tmp_path).items():
        assert outcome(validate, base) is None, f"{entry}: the base command must pass"
        for action in _flags(build()):
            flag = action.option_strings[0]
            numeric = isinstance(action.type, Number)
            assert action.type not in (int, float), f"{entry} {flag}: a bare {action.type.__name__} type; give it a Number range"
            if isinstance(action.default, (int, float)) and not isinstance(action.default, bool) and action.choices is None:
                assert numeric, f"{entry} {flag}: a numeric flag without a Number type (its range)"
            kind = _path_kind(entry, action)
            if PATH_NAME.search(action.dest):
                assert kind is not None, f"{entry} {flag}: a path flag without a kind (PathKind)"
            if numeric:
                for value in NUMERIC_VALUES:
                    line = outcome(validate, [*base, flag, value])
                    walked += 1
                    if value in ALWAYS_REFUSED or (action.type.kind is int and value in (str(2**64), "1e300")):
                        assert line is not None and flag in line, (entry, flag, value, line)
                    if action.type is SEED:
                        assert line is not None if value == "-1" else True, (entry, flag)
                if action.type is SEED:
                    assert outcome(validate, [*base, flag, str(INT64_MAX)]) is None, (entry, flag)
            if kind is not None:
                for which in PATH_VALUES:
                    line = outcome(validate, [*base, flag, _path_value(tmp_path, which)])
                    walked += 1
                    if kind == "file" and which in ("directory", "missing", "unwritable"):
                        assert line is not None, (entry, flag, which)
                    if kind == "input_folder" and which != "directory":
                        assert line is not None and flag in line, (entry, flag, which, line)
                    if kind in ("folder", "output") and which in ("file", "unwritable"):
                        assert line is not None and flag in line, (entry, flag, which, line)
                    if kind in ("folder", "output") and which in ("missing", "directory"):
                        assert line is None, (entry, flag, which, line)
            if action.choices is not None:
                line = outcome(validate, [*base, flag, "no-such-choice"])
                assert line is not None and flag in line, (entry, flag, line)
    assert walked > 400
    assert _snapshot(tmp_path) == before, "a refused or checked command left something behind"


def _beyond(number: Number, edge: float, side: int) -> float:
    """The first value past ``edge`` on ``side`` (-1 below, +1 above) of ``number``'s range: the edge itself when the
    range is open there, else one step (1 for whole numbers, a millionth of the edge's size for others) further."""
    is_open = number.low_open if side < 0 else number.high_open
    if is_open:
        return edge
    return edge + side if number.kind is int else edge + side * max(abs(edge), 1.0) * 1e-6


# run flags (train_student.py, train_teacher.py, bench.py) whose range may stay the implicit 0 .. 2**63 - 1: the seeds
IMPLICIT_RANGE_OK = {"seed"}


def test_every_numeric_flag_at_the_edges_of_its_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every numeric flag of every parser has a range a real run can use (a float always an upper bound; a count of a
    run flag its own), its edges pass the flag's check (another check may still refuse the combination, never the
    flag's range), and the first value past either edge is refused with the flag named. Configuration only."""
    monkeypatch.chdir(tmp_path)
    _fixtures(tmp_path)
    before = _snapshot(tmp_path)
    walked = 0
    for entry, (build, validate, base) in _entry_points(tmp_path).items():
        for action in _flags(build()):
            number = action.type
            if not isinstance(number, Number):
                continue
            flag = action.option_strings[0]
            assert number.high is not None, f"{entry} {flag}: no upper bound"
            if number.kind is float:
                assert math.isfinite(number.high), f"{entry} {flag}: a float without a finite upper bound"
            if entry in ("train_student.py", "train_teacher.py", "bench.py") and action.dest not in IMPLICIT_RANGE_OK:
                assert number.high < INT64_MAX, f"{entry} {flag}: a run flag needs a range of its own (Number high=)"
            edges = [(number.low, -1)] if number.low is not None else []
            edges.append((number.high, +1))
            for edge, side in edges:
                inside = edge if not (number.low_open if side < 0 else number.high_open) else None
                if inside is not None:
                    line = outcome(validate, [*base, f"{flag}={inside!r}" if number.kind is float else f"{flag}={int(inside)}"])
                    assert line is None or f"{flag} must be" not in line, (entry, flag, inside, line)
                past = _beyond(number, edge, side)
                line = outcome(validate, [*base, f"{flag}={past!r}" if number.kind is float else f"{flag}={int(past)}"])
                assert line is not None and f"{flag} must be" in line, (entry, flag, past, line)
                walked += 2
    assert walked > 150
    assert _snapshot(tmp_path) == before


# the string flags whose empty value means something: --relational (no method, as W&B agents write it; helper/config.py)
EMPTY_OK = {"relational"}
# string flags argparse alone does not check, refused first thing when the script runs (asserted below through main):
# verify_teacher.py --device (core.device.resolve_device); sweep.py --program (sweep.py's check of the program it runs)
EMPTY_AT_RUN_TIME = {("verify_teacher.py", "--device"), ("sweep.py", "--program")}
# the flags that take a comma-separated list, with a valid value of each
LIST_FLAGS = {("train_teacher.py", "--lr_decay_epochs"): "5,7", ("train_student.py", "--_tags"): "a,b",
              ("train_teacher.py", "--_tags"): "a,b", ("parity.py", "--methods"): "kd,ce", ("parity.py", "--sides"): "project",
              ("parity.py", "--seeds"): "1,2"}


def test_every_empty_string_and_every_list_item_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every string-valued flag of every parser given an empty value, and every list flag given an empty item and a
    repeated item, is refused with one sentence naming the flag (``--device ''`` is not auto, ``1,,1`` is not two
    decays at epoch 1); nothing is left behind."""
    monkeypatch.chdir(tmp_path)
    _fixtures(tmp_path)
    before = _snapshot(tmp_path)
    lists_seen = set()
    for entry, (build, validate, base) in _entry_points(tmp_path).items():
        for action in _flags(build()):
            flag = action.option_strings[0]
            if action.nargs == 0 or isinstance(action.type, Number) or action.type is str2bool:
                continue
            if action.dest in EMPTY_OK or (entry, flag) in EMPTY_AT_RUN_TIME:
                continue
            line = outcome(validate, [*base, f"{flag}="])
            assert line is not None and flag in line, (entry, flag, line)
            if (entry, flag) in LIST_FLAGS:
                lists_seen.add((entry, flag))
                good = LIST_FLAGS[entry, flag]
                first = good.split(",")[0]
                extra = ["--epochs", "10"] if flag == "--lr_decay_epochs" else []
                assert outcome(validate, [*base, flag, good, *extra]) is None, (entry, flag)
                for bad in (f"{first},,{good}", f",{good}", f"{good},", f"{good},{first}"):
                    line = outcome(validate, [*base, flag, bad, *extra])
                    assert line is not None and flag in line and ("empty item" in line or "more than once" in line), \
                        (entry, flag, bad, line)
    assert lists_seen == set(LIST_FLAGS)
    assert _snapshot(tmp_path) == before
    from core.device import resolve_device

    with pytest.raises(UserError, match="^--device is empty; pass auto, cpu"):
        resolve_device("")
    with pytest.raises(UserError, match="^--device is empty; pass auto, cpu"):
        verify_teacher.main(["resnet8", str(ROOT / "ckd.yml"), "--device", ""])  # before the file is read
    with pytest.raises(UserError, match="^--program is empty; name the training script"):
        sweep.main([str(ROOT / "ckd.yml"), "--program", "", "--dry-run"])
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("relational,distill", method_table.combinations(), ids=lambda v: str(v))
def test_zero_weights_are_refused_for_the_active_terms_of_every_method(relational: str | None, distill: str) -> None:
    """Derived from the method table: all active weights 0 is refused, any one of them above 0 trains."""
    spec = method_table.method_spec(relational, distill)
    active = method_table.active_weight_flags(spec)
    assert active[0] == "w_cls" and "w_kd" in active
    zero = dict.fromkeys(active, 0.0)
    with pytest.raises(UserError, match=r"^every loss weight is 0 \(.*\): nothing would train"):
        StudentConfig(relational=relational, distill=distill, model_t="resnet8", **zero)
    for flag in active:
        StudentConfig(relational=relational, distill=distill, model_t="resnet8", **{**zero, flag: 1.0})


def test_seeds_follow_one_rule_in_every_configuration() -> None:
    for make in (lambda s: StudentConfig(seed=s, model_t="resnet8"), lambda s: parse_teacher_args(["--seed", str(s)])):
        make(0)
        make(INT64_MAX)
    with pytest.raises(UserError, match=r"^--seed must be at least 0, got -1$"):
        StudentConfig(seed=-1, model_t="resnet8")
    with pytest.raises(UserError, match=r"^--seed must be at most 9223372036854775807"):
        StudentConfig(seed=INT64_MAX + 1, model_t="resnet8")


def test_path_t_is_named_before_its_folder_is_read(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"is a directory, not a checkpoint"):
        parse_student_args(["--path_t", str(tmp_path)])
    missing = tmp_path / "runz" / "ckpt.pth"  # a mistyped folder whose name is no architecture
    with pytest.raises(UserError) as err:
        parse_student_args(["--path_t", str(missing)])
    assert str(err.value).startswith(f"teacher checkpoint {missing} does not exist; check --path_t")
    assert "architecture" not in str(err.value)


def test_lr_decay_epochs_past_epochs_are_refused_but_the_published_default_is_kept() -> None:
    parse_teacher_args(["--epochs", "2"])  # the published 150,180,210: a short smoke test of the published schedule
    parse_teacher_args(["--epochs", "10", "--lr_decay_epochs", "7"])
    with pytest.raises(UserError, match="decays after epoch 10, which --epochs 10 never reaches"):
        parse_teacher_args(["--epochs", "10", "--lr_decay_epochs", "5,10"])


def test_every_flag_shows_its_default_and_bench_lists_the_method_table() -> None:
    for build in (build_student_parser, build_teacher_parser, bench.build_parser, sweep.build_parser, summarize.build_parser,
                  parity.build_parser, export_cifar_format.build_parser, verify_teacher.build_parser, fetch_teachers.build_parser):
        parser = build()
        formatter = parser._get_formatter()
        for action in _flags(parser):
            if action.nargs == 0 or action.default is None and "(default" not in (action.help or ""):
                continue  # switches; a None default says nothing unless the help words it
            assert "default" in formatter._get_help_string(action), (parser.prog, action.option_strings)
    text = " ".join(bench.build_parser().format_help().split())
    for name in ("dkd", "attention", "ttm", "wttm", "mlkd", "kdsvd"):
        assert name in text, name
    assert "w_kd" in build_student_parser().format_help() and "labels only" in " ".join(build_student_parser().format_help().split())


# ---------------------------------------------------------------- the table of docs/reliability.md

# (command as the table shows it, entry point, arguments after the script); run in a folder holding notes.txt (a file),
# runs/ (a folder), latin1.yml (a sweep file saved as Latin-1) and s.yml (a sweep file)
BAD_INPUT_ROWS: tuple[tuple[str, list[str]], ...] = (
    ("train_student.py", ["--seed", "-1"]),
    ("train_student.py", ["--seed", str(2**63)]),
    ("train_teacher.py", ["--seed", "-1"]),
    ("train_student.py", ["--w_kd", "nan"]),
    ("train_student.py", ["--kd_T", "inf"]),
    ("train_student.py", ["--nce_m", "2"]),
    ("train_student.py", ["--epochs", "2.5"]),
    ("train_student.py", ["--w_cls", "0", "--w_kd", "0"]),
    ("train_student.py", ["--relational", "ckd", "--w_cls", "0", "--w_rel_scale", "0"]),
    ("train_teacher.py", ["--lr_decay_epochs", "300", "--epochs", "2"]),
    ("train_student.py", ["--learning_rate", "1e308"]),
    ("train_student.py", ["--feat_dim", "1e12"]),
    ("train_student.py", ["--device="]),
    ("train_student.py", ["--calibrate", "train_mean"]),
    ("train_teacher.py", ["--lr_decay_epochs", "1,,1"]),
    ("train_teacher.py", ["--lr_decay_epochs", "5,5", "--epochs", "10"]),
    ("train_student.py", ["--path_t", "runs"]),
    ("train_student.py", ["--path_t", "sav/models/resnet56_vanilla/ckpt_epoch_240.pth"]),
    ("train_student.py", ["--save_dir", "notes.txt"]),
    ("train_student.py", ["--data_folder", "notes.txt/data"]),
    ("summarize.py", ["runs", "--out", "notes.txt"]),
    ("sweep.py", ["latin1.yml", "--dry-run"]),
    ("sweep.py", ["s.yml", "--python", "/nonexistent/python", "--dry-run"]),
    ("sweep.py", ["s.yml", "--count", "0"]),
    ("bench.py", ["--steps", "0"]),
    ("parity.py", ["--data_folder", "data", "--path_t", "runs", "--out", "out"]),
    ("export_cifar_format.py", ["--out", "notes.txt"]),
    ("verify_teacher.py", ["resnet56", "runs"]),
    ("fetch_teachers.py", ["--only", "resnet56", "--sha256", "runs"]),
)


def entry_path(entry: str) -> str:
    """Where an entry point lives, relative to the checkout: the root, scripts/ (user tools) or benchmarks/."""
    return next(f"{folder}{entry}" for folder in ("", "scripts/", "benchmarks/") if (ROOT / folder / entry).is_file())


def _table_folder(folder: Path) -> None:
    (folder / "notes.txt").write_text("a file\n")
    (folder / "runs").mkdir(exist_ok=True)
    (folder / "latin1.yml").write_bytes("program: train_student.py  # caf\xe9\n".encode("latin-1"))
    _sweep_file(folder)


def _cell(line: str) -> str:
    """``line`` as a markdown code span (doubled backticks when it quotes a command itself)."""
    return f"`` {line} ``" if "`" in line else f"`{line}`"


def bad_input_table(folder: Path) -> str:
    """The markdown table of BAD_INPUT_ROWS with the line each command prints (run in ``folder``)."""
    validators = {name: validate for name, (_, validate, _) in _entry_points(folder).items()}
    lines = ["| command | what you see | exit code |", "|---|---|---|"]
    for entry, args in BAD_INPUT_ROWS:
        line = outcome(validators[entry], args)
        assert line is not None, (entry, args)
        lines.append(f"| `python {entry_path(entry)} {' '.join(args)}` | {_cell(line)} | 2 |")
    return "\n".join(lines)


def test_reliability_table_is_what_the_commands_print(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _table_folder(tmp_path)
    before = _snapshot(tmp_path)
    table = bad_input_table(tmp_path)
    assert _snapshot(tmp_path) == before
    page = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert table in page, "docs/reliability.md's per-flag table is out of date: python -m tests.test_every_flag"


SUBPROCESS_ROWS = (2, 9, 14, 15, 16, 18)  # rows of BAD_INPUT_ROWS also run as the real command


def test_representative_commands_print_the_same_line_and_leave_nothing(tmp_path: Path) -> None:
    _table_folder(tmp_path)
    before = _snapshot(tmp_path)
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = []
    for index in SUBPROCESS_ROWS:
        entry, args = BAD_INPUT_ROWS[index]
        script = ROOT / entry_path(entry)
        procs.append((entry, args, subprocess.Popen([sys.executable, str(script), *args], cwd=tmp_path, env=env,
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    fetch = ROOT / "scripts" / "fetch_pretrained_teachers.sh"
    for args in (["--save_dir", "notes.txt"], ["--save_dir", "notes.txt/save"], ["--data_folder", "notes.txt"],
                 ["--sha256", "runs"], ["--source", "ftp"], ["--only", "resnet9000"]):
        procs.append(("fetch", args, subprocess.Popen(["sh", str(fetch), *args, "--dry-run"], cwd=tmp_path,
                                                      env={**env, "PYTHON": sys.executable},
                                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    page = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    for entry, args, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (entry, args, err)
        assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: "), (entry, args, out, err)
        if entry != "fetch":
            assert _cell(err.strip()) in page, (entry, args, err)
    assert _snapshot(tmp_path) == before


if __name__ == "__main__":  # print the per-flag table of docs/reliability.md
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        _table_folder(Path(folder))
        print(bad_input_table(Path(folder)))


def test_every_batch_size_is_checked_against_its_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch larger than the training data is refused in one sentence by every script that trains or benchmarks:
    train_teacher.py (1,437 digits images), train_student.py (its training split) and bench.py (its synthetic split),
    before anything is written."""
    import train_student
    import train_teacher

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^--batch_size 5000 is larger than the 1437-image training set of --dataset "
                                        r"digits; pass --batch_size 1437 or less$"):
        train_teacher.main(["--dataset", "digits", "--batch_size", "5000", "--device", "cpu", "--save_dir", "save"])
    with pytest.raises(UserError, match=r"^--subset_size 1437 with --train_val_frac 0.8 leaves 1150 training images, "
                                        r"fewer than one batch of --batch_size 5000; lower --batch_size to 1150 or less$"):
        train_student.main(["--dataset", "digits", "--batch_size", "5000", "--device", "cpu", "--save_dir", "save",
                            "--model_s", "resnet8", "--model_t", "resnet8"])
    _, opt = bench.check_args(["--batch_size", "5000", "--subset_size", "300", "--device", "cpu"])
    with pytest.raises(UserError, match=r"fewer than one batch of --batch_size 5000"):
        bench.synthetic_training_set(opt)
    assert list(tmp_path.iterdir()) == []
