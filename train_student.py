"""Train a student with few teacher inferences: CKD and its baselines.

    python train_student.py --model_s resnet32 --relational ckd --subset_size 2000

Every flag is documented in ``--help`` and in docs/flags.md. The run writes results.json, best.pth,
last.pth and TensorBoard/W&B logs into save/student/<run name>/, and its last printed line is
``results: <path to results.json>``. From Python: ``helper.run.run_student(cfg)``.
"""

from __future__ import annotations

from core.errors import run_main
from helper.config import parse_student_args
from helper.run import run_student


def main(argv: list[str] | None = None) -> None:
    run_student(parse_student_args(argv))


if __name__ == "__main__":
    run_main(main)
