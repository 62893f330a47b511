"""Every script under an interpreter that cannot import the project (no editable install): one sentence naming the
command that fixes it, exit 2, never a ModuleNotFoundError traceback (issue 27, deliverable 5)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_INSTALLED = ("error: this Python cannot import the project (No module named 'core'); run `make venv` and use "
                 ".venv/bin/python, or run `pip install --no-deps -e .` in the repository root")
# a line that imports this project (at the top or inside a function)
PROJECT_IMPORT = re.compile(r"^\s*(from|import) (core|helper|dataset|models|distiller_zoo|crd|scripts|train_student|"
                            r"train_teacher)\b", re.MULTILINE)
# imports the published checkout's packages (same names: dataset, helper, ...), never this project
PUBLISHED_SIDE = {"parity_worker.py"}


def _scripts() -> list[Path]:
    return sorted([*ROOT.glob("scripts/*.py"), *ROOT.glob("benchmarks/*.py")])


def test_no_sys_path_patching() -> None:
    folders = ("scripts", "benchmarks", "helper", "core", "dataset", "models", "distiller_zoo", "crd")
    files = [*ROOT.glob("train_*.py"), *(p for folder in folders for p in (ROOT / folder).rglob("*.py"))]
    assert [str(p.relative_to(ROOT)) for p in files if "sys.path" in p.read_text()] == []


def test_every_script_without_the_install_names_the_fix(tmp_path: Path) -> None:
    """`python -S` (no site-packages, so neither the editable install nor PYTHONPATH) from an empty folder: a script
    that imports the project stops with the one sentence; one that never does (the parity worker, which imports the
    published checkout) prints its usage. All started at once: no torch import, a few hundred ms in all."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    procs = {path: subprocess.Popen([sys.executable, "-S", str(path), "--help"], cwd=tmp_path, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for path in _scripts()}
    wrong = []
    for path, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        if path.name not in PUBLISHED_SIDE and PROJECT_IMPORT.search(path.read_text()):
            if (proc.returncode, out, err) != (2, "", NOT_INSTALLED + "\n"):
                wrong.append(f"{path.name}: exit {proc.returncode}, stderr {err[-300:]!r}")
        elif proc.returncode != 0 or not out.startswith("usage:"):
            wrong.append(f"{path.name} (imports nothing of the project): exit {proc.returncode}, stderr {err[-300:]!r}")
    assert len(procs) >= 9 and wrong == []
