"""Train a teacher from scratch (RepDistiller recipe: 240 epochs, SGD, decays at 150/180/210).

    python train_teacher.py --model resnet110
    python train_teacher.py --model resnet8 --dataset digits --epochs 30

The checkpoint is written where train_student.py finds it without --path_t.
"""

from __future__ import annotations

from helper.errors import run_main
from helper.options import build_teacher_parser


def main(argv: list[str] | None = None) -> None:
    opt = build_teacher_parser().parse_args(argv)
    from helper.teacher_trainer import TeacherRun  # deferred so that --help and flag errors stay instant

    TeacherRun(opt).run()


if __name__ == "__main__":
    run_main(main)
