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
from core.errors import UserError
from helper.config import StudentConfig, TeacherConfig


def check_config_type(cfg: object, expected: type, entry: str) -> None:
    """Refuse, in one sentence, a configuration of the wrong kind (``run_student(TeacherConfig(...))``, a dict, an
    argparse namespace) before anything runs."""
    if isinstance(cfg, expected):
        return
    other = {StudentConfig: ("run_student", "train_student.py"), TeacherConfig: ("run_teacher", "train_teacher.py")}
    hint = f"; a {type(cfg).__name__} goes to {other[type(cfg)][0]}" if type(cfg) in other else ""
    raise UserError(f"{entry} takes a {expected.__name__} (built with {expected.__name__}(...) or "
                    f"parse_{'student' if expected is StudentConfig else 'teacher'}_args([...])), got "
                    f"{type(cfg).__name__}{hint}")


def run_teacher(cfg: TeacherConfig) -> Path:
    """Train (or resume, or find finished) the teacher of ``cfg``; returns its final checkpoint."""
    check_config_type(cfg, TeacherConfig, "run_teacher")
    from helper.teacher_trainer import TeacherRun  # deferred: flag errors and --help stay instant

    env.check(env.RUN_VARIABLES)  # a bad environment variable is refused before anything is read or written
    return TeacherRun(cfg).run()


def run_student(cfg: StudentConfig) -> dict[str, Any]:
    """Train (or resume, or find finished) the student run of ``cfg``; returns its results (as in results.json)."""
    check_config_type(cfg, StudentConfig, "run_student")
    from helper.student_trainer import StudentRun  # deferred: flag errors and --help stay instant

    env.check(env.RUN_VARIABLES)  # a bad environment variable is refused before anything is read or written
    return StudentRun(cfg).run()
