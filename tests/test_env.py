"""Every environment variable the project reads is in core/env.py's registry, is parsed there with a flag's checks, and
a value it does not accept is refused with one sentence (exit code 2 from the command line, nothing made); the table
of docs/reliability.md is the registry's (``python -m core.env --table`` regenerates it)."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core import env
from core.errors import UserError
from core.fs import show_path
from tests.conftest import ROOT

# values no variable accepts: words, a NaN, a negative number, a URL without a scheme, a W&B-forbidden character
GARBAGE = ("garbage", "nan", "-1", "1e400", "//no-scheme", "a/b:c", " not one ")
FREE_TEXT = {"WANDB_API_KEY"}  # only whether it is set is read; W&B refuses a wrong key (the run goes on without W&B)
SOURCE_FOLDERS = ("core", "dataset", "helper", "scripts", "benchmarks", "models", "distiller_zoo", "crd")


def _path_garbage(tmp: Path) -> tuple[str, ...]:
    (tmp / "afile").write_text("a file\n")
    return (str(tmp / "afile"), str(tmp / "afile" / "below"), str(tmp / ("a" * 256)), os.devnull)


def test_every_variable_refuses_garbage_in_one_sentence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path_garbage = _path_garbage(tmp_path)
    for variable in env.VARIABLES:
        refused = 0
        values = path_garbage if variable.is_path else GARBAGE
        for value in values:
            monkeypatch.setenv(variable.name, value)
            try:
                env.get(variable.name)
            except env.EnvError as err:
                text = str(err)
                assert "\n" not in text and text.startswith(f"the environment variable {variable.name}="), text
                assert repr(show_path(value)) in text and "unset it" in text, text
                refused += 1
        if variable.name in FREE_TEXT:
            assert refused == 0, variable.name
        else:
            assert refused >= min(3, len(values)), f"{variable.name} accepts garbage ({refused} of {values} refused)"
        monkeypatch.setenv(variable.name, "")
        assert env.get(variable.name) == variable.default  # empty: the default, as unset
        monkeypatch.delenv(variable.name)
        assert env.get(variable.name) == variable.default


def test_numeric_variables_use_the_flags_number_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    from helper.options import POSITIVE_FLOAT

    monkeypatch.setenv("CIFAR100_TIMEOUT", "abc")
    with pytest.raises(env.EnvError, match=r"CIFAR100_TIMEOUT='abc' is refused: it must be a number;"):
        env.get("CIFAR100_TIMEOUT")
    with pytest.raises(Exception, match="must be a number, got 'abc'"):
        POSITIVE_FLOAT("abc")  # the same words as the flag's
    monkeypatch.setenv("CIFAR100_TIMEOUT", " 2.5 ")
    assert env.get("CIFAR100_TIMEOUT") == 2.5
    monkeypatch.setenv("CKD_CHECKPOINT_EVERY_S", "0")
    assert env.get("CKD_CHECKPOINT_EVERY_S") == 0.0
    monkeypatch.setenv("WANDB_MODE", " Offline ")
    assert env.get("WANDB_MODE") == "offline"


def _environ_reads(path: Path) -> list[str]:
    """``os.environ.get(...)``, ``os.getenv(...)`` and ``os.environ[...]`` reads in ``path`` (writes and copies are
    not reads of a variable)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        text = ast.unparse(node) if isinstance(node, (ast.Call, ast.Subscript)) else ""
        if isinstance(node, ast.Call) and re.match(r"os\.(environ\.get|getenv)\(", text):
            found.append(text)
        if isinstance(node, ast.Subscript) and text.startswith("os.environ[") and isinstance(node.ctx, ast.Load):
            found.append(text)
    return found


def test_every_variable_read_goes_through_the_registry() -> None:
    paths = [p for folder in SOURCE_FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))]
    paths += sorted(ROOT.glob("*.py"))
    reads = {str(p.relative_to(ROOT)): found for p in paths if p.name != "env.py" and (found := _environ_reads(p))}
    assert not reads, f"read through core.env.get (register the variable there): {reads}"
    # the shell scripts: every project variable they read is registered
    shell_scripts = sorted((ROOT / "scripts").glob("*.sh")) + sorted((ROOT / "benchmarks").glob("*.sh"))
    for script in shell_scripts:
        text = script.read_text(encoding="utf-8")
        for name in set(re.findall(r"\$\{?((?:TEACHER|CIFAR100|CKD|WANDB|GPU_CHECK)_[A-Z_]+)", text)):
            assert name in env.REGISTRY, f"{script.name} reads ${name}, which core/env.py does not register"
    # and every registered variable is read somewhere
    code = "\n".join(p.read_text(encoding="utf-8") for p in paths if p.name != "env.py") + "".join(
        s.read_text(encoding="utf-8") for s in shell_scripts)
    for name in env.REGISTRY:
        assert re.search(rf"['\"$]{{?{name}\b", code), f"{name} is registered but nothing reads it"


def test_reliability_page_holds_the_generated_table() -> None:
    page = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert env.markdown_table() in page, "docs/reliability.md's variable table is out of date: python -m core.env --table"


def _refusal(call, argv: list[str]) -> str:
    """Run ``call(argv)`` as the command line does (core.errors.run_main); the one ``error:`` line it exits 2 with."""
    from core.errors import run_main

    stderr = io.StringIO()
    with pytest.raises(SystemExit) as stop, contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        run_main(lambda: call(argv))
    assert stop.value.code == 2
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the environment variable "), lines
    return lines[0]


def _snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_entry_points_refuse_a_bad_variable_before_anything_is_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every variable a run reads, set to garbage, stops train_student.py / train_teacher.py at once (before the data,
    the teacher or the run folder); the teacher fetch's four stop scripts/fetch_teachers.py."""
    import train_student
    import train_teacher
    from scripts import fetch_teachers
    monkeypatch.chdir(tmp_path)
    save = tmp_path / "save"
    before = _snapshot(tmp_path)
    student = ["--dataset", "digits", "--model_s", "resnet8", "--model_t", "resnet8", "--save_dir", str(save),
               "--device", "cpu", "--epochs", "1"]
    teacher = ["--dataset", "digits", "--model", "resnet8", "--save_dir", str(save), "--device", "cpu", "--epochs", "1"]
    for name in env.RUN_VARIABLES:
        if name in FREE_TEXT:
            continue
        monkeypatch.setenv(name, "garbage/#")
        assert f"{name}='garbage/#'" in _refusal(train_student.main, student)
        assert f"{name}='garbage/#'" in _refusal(train_teacher.main, teacher)
        monkeypatch.delenv(name)
    for name in fetch_teachers.FETCH_ENVIRONMENT:
        monkeypatch.setenv(name, "abc")
        assert f"{name}='abc'" in _refusal(fetch_teachers.main, ["--only", "resnet56", "--save_dir", str(save)])
        monkeypatch.delenv(name)
    assert _snapshot(tmp_path) == before


def test_the_command_line_and_the_shell_scripts_check_through_the_registry(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if k not in env.REGISTRY}
    procs = [
        subprocess.Popen([sys.executable, "-m", "core.env"], cwd=ROOT, env={**base, "CIFAR100_TIMEOUT": "abc"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        subprocess.Popen(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path,
                         env={**base, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "GPU_CHECK_BUDGET_S": "abc"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    ]
    for proc, name in zip(procs, ("CIFAR100_TIMEOUT", "GPU_CHECK_BUDGET_S")):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and out == "", (proc.args, out, err)
        assert len(err.splitlines()) == 1 and err.startswith(f"error: the environment variable {name}='abc'"), err
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="NOPE is not an environment variable the project reads"):
        env.main(["NOPE"])
