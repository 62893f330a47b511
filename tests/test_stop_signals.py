"""SIGINT and SIGTERM stop a run within seconds in every phase: data preparation, the teacher cache, the init stage of
a two-stage method, training and evaluation (and the teacher's data and training), with exit code 128 + the signal,
one line on stderr and no traceback.

Each phase is made long on purpose by a small driver script this test writes: it replaces the function of that phase
with one that marks a flag file and then waits (or, for a training step, one that is slow but finite: a step in flight
is finished), and then runs the real entry point. The runs of one test start together, so the suite pays for their
start-up once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helper.options import teacher_checkpoint_path
from tests.conftest import ROOT

STOP_LIMIT_S = 5  # the promise: a stop request is honoured within this many seconds, whatever the phase
START_LIMIT_S = 240  # generous: the runs of a test start together on a shared two-core machine

DRIVER = '''\
import sys, time
from pathlib import Path

PHASE, FLAG, SCRIPT = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
ARGV = sys.argv[4:]

import helper.methods
import helper.student_trainer as student_trainer
import helper.teacher_trainer as teacher_trainer
import train_student
import train_teacher
from core.errors import run_main


def stall(*args, **kwargs):
    FLAG.touch()
    while True:
        time.sleep(0.05)


def slow(original):
    def step(*args, **kwargs):
        FLAG.touch()
        time.sleep(0.3)
        return original(*args, **kwargs)
    return step


def held(original):
    """A training step that waits for the stop request, then finishes: the signal always finds a step in flight."""
    def step(self, *args, **kwargs):
        FLAG.touch()
        while not self.stop.requested:
            time.sleep(0.05)
        return original(self, *args, **kwargs)
    return step


if PHASE == "data":
    student_trainer.load_data = stall
elif PHASE == "cache":
    student_trainer.cache_teacher = stall
elif PHASE == "init":
    helper.methods.InitStage.__call__ = slow(helper.methods.InitStage.__call__)
elif PHASE == "training":
    student_trainer.StudentRun.train_step = held(student_trainer.StudentRun.train_step)
elif PHASE == "evaluation":  # the validation after the first pseudo-epoch (the first call is the teacher's test)
    calls = []
    evaluate = student_trainer.evaluate

    def evaluate_then_stall(*args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:
            stall()
        return evaluate(*args, **kwargs)

    student_trainer.evaluate = evaluate_then_stall
elif PHASE == "teacher-data":
    teacher_trainer.load_data = stall
elif PHASE == "teacher-training":
    teacher_trainer.TeacherRun.train_step = held(teacher_trainer.TeacherRun.train_step)
main = train_student.main if SCRIPT == "student" else train_teacher.main
run_main(lambda: main(ARGV))
'''

# phase -> (script, extra flags); each phase is run with SIGINT or SIGTERM in `make test` and with the other in the
# slow tests
PHASES = {
    "data": ("student", []),
    "cache": ("student", []),
    "init": ("student", ["--distill", "fsp", "--init_epochs", "50"]),
    "training": ("student", ["--relational", "ckd"]),
    "evaluation": ("student", ["--relational", "ckd"]),
    "teacher-data": ("teacher", []),
    "teacher-training": ("teacher", []),
}
FAST = {"data": signal.SIGINT, "cache": signal.SIGTERM, "init": signal.SIGINT, "training": signal.SIGTERM,
        "evaluation": signal.SIGINT}
SLOW = {**{phase: signal.SIGTERM if sig == signal.SIGINT else signal.SIGINT for phase, sig in FAST.items()},
        "teacher-data": signal.SIGINT, "teacher-training": signal.SIGTERM}


def _command(driver: Path, phase: str, flag: Path, teacher_save: Path, save: Path) -> list[str]:
    script, extra = PHASES[phase]
    common = ["--dataset", "digits", "--device", "cpu", "--save_dir", str(save), "--batch_size", "32"]
    if script == "student":
        args = ["--model_s", "resnet8", "--model_t", "resnet8", "--subset_size", "100", "--epochs", "100",
                "--path_t", str(teacher_checkpoint_path(teacher_save, "digits", "resnet8")), *common, *extra]
    else:
        args = ["--model", "resnet8", "--epochs", "100", "--lr_decay_epochs", "50", *common, *extra]
    return [sys.executable, str(driver), phase, str(flag), script, *args]


def _stop_each_phase(signals: dict[str, signal.Signals], tmp_path: Path, teacher_save: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    runs = {}
    for phase in signals:
        flag, save = tmp_path / f"{phase}.flag", tmp_path / f"save-{phase}"
        runs[phase] = (flag, save, subprocess.Popen(_command(driver, phase, flag, teacher_save, save), cwd=ROOT, env=env,
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + START_LIMIT_S
        for phase, (flag, _, proc) in runs.items():  # every run in its phase (waiting there) before the first signal
            while not flag.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    out, err = proc.communicate()
                    pytest.fail(f"{phase}: the run never reached the phase (exit {proc.returncode}): {err[-2000:]}")
                time.sleep(0.05)
        for phase, sig in signals.items():
            flag, save, proc = runs[phase]
            proc.send_signal(sig)
            try:
                out, err = proc.communicate(timeout=STOP_LIMIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                pytest.fail(f"{phase}: {sig.name} was not honoured within {STOP_LIMIT_S} s: {err[-3000:]}")
            assert proc.returncode == 128 + sig, (phase, proc.returncode, err[-2000:])
            assert "Traceback" not in err + out, (phase, err[-2000:])
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith(f"received {sig.name}"), (phase, err)
            if phase in ("data", "cache", "teacher-data"):  # stopped before anything was written
                assert not save.exists() or not any(p.is_file() for p in save.rglob("*")), (phase, list(save.rglob("*")))
                assert "during" in lines[0] and "starts the run again" in lines[0], (phase, lines[0])
            if phase in ("training", "teacher-training"):  # the step in flight is finished and saved
                assert "stopped: saved" in out and list(save.rglob("last.pth")), (phase, out[-2000:])
    finally:
        for _, _, proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_a_stop_request_is_honoured_within_seconds_in_every_phase(tmp_path: Path, digits_save: Path) -> None:
    _stop_each_phase(FAST, tmp_path, digits_save)


@pytest.mark.slow
def test_the_other_signal_in_every_phase_and_the_teacher_phases(tmp_path: Path, digits_save: Path) -> None:
    _stop_each_phase(SLOW, tmp_path, digits_save)
