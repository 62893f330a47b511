"""Train a student with few teacher inferences: CKD and its baselines.

    python train_student.py --model_s resnet32 --relational ckd --subset_size 2000

Every flag is documented in ``--help`` and in docs/flags.md. The run writes results.json, best.pth,
last.pth and TensorBoard/W&B logs into save/student/<run name>/, and its last printed line is
``results: <path to results.json>``.
"""

from __future__ import annotations

from core.errors import run_main
from helper.options import parse_student_args


def main(argv: list[str] | None = None) -> None:
    opt = parse_student_args(argv)
    from helper.student_trainer import StudentRun  # deferred so that --help and flag errors stay instant

    StudentRun(opt).run()


if __name__ == "__main__":
    run_main(main)
