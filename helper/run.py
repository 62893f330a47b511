"""The Python entry point: run exactly what ``train_teacher.py`` / ``train_student.py`` run, from a configuration.

    import dataclasses
    from helper.config import StudentConfig, TeacherConfig, parse_student_args
    from helper.run import run_student, run_teacher

    teacher = run_teacher(TeacherConfig(model="resnet8", dataset="digits", epochs=2, save_dir="save", device="cpu"))
    cfg = parse_student_args(["--dataset", "digits", "--model_s", "resnet8", "--model_t", "resnet8", "--save_dir", "save"])
    results = [run_student(dataclasses.replace(cfg, seed=s)) for s in (1, 2, 3)]

A bad value raises :class:`core.errors.UserError` with the command line's sentence; a finished configuration is
not trained again (its stored results are returned); an interrupted one resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core import env
from helper.config import StudentConfig, TeacherConfig


def run_teacher(cfg: TeacherConfig) -> Path:
    """Train (or resume, or find finished) the teacher of ``cfg``; returns its final checkpoint."""
    from helper.teacher_trainer import TeacherRun  # deferred: flag errors and --help stay instant

    env.check(env.RUN_VARIABLES)  # a bad environment variable is refused before anything is read or written
    return TeacherRun(cfg).run()


def run_student(cfg: StudentConfig) -> dict[str, Any]:
    """Train (or resume, or find finished) the student run of ``cfg``; returns its results (as in results.json)."""
    from helper.student_trainer import StudentRun  # deferred: flag errors and --help stay instant

    env.check(env.RUN_VARIABLES)  # a bad environment variable is refused before anything is read or written
    return StudentRun(cfg).run()
