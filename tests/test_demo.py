"""`make demo` must not rot: its quick mode runs the same path (teacher, every demo method, table, plot) in minutes."""

from __future__ import annotations

import os
import subprocess
import sys

from scripts.demo import METHODS
from tests.conftest import ROOT


def test_demo_quick_mode_prints_a_table_and_writes_the_plot(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "scripts/demo.py", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("[teacher] training resnet14") for line in lines)
    assert sum(line.startswith("[ ") for line in lines) == len(METHODS)  # one progress line per student run (one seed)
    for method in METHODS:
        assert any(line.startswith(f"| {method} |") for line in lines), method
    # the paired table against kd, and (one seed: no spread) the line saying what more seeds would give
    assert any(line.startswith("Paired difference to kd (test_acc") for line in lines)
    assert any(line.startswith("- ckd vs kd at subset 200: one seed pair gives no spread") for line in lines)
    png = out / "accuracy_vs_teacher_calls.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "summary.md").is_file() and (out / "summary.csv").is_file()
    # a second run reuses the teacher and every finished run
    again = subprocess.run([sys.executable, "scripts/demo.py", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "[teacher] reusing" in again.stdout
