"""Train a teacher from scratch (RepDistiller recipe: 240 epochs, SGD, decays at 150/180/210).

    python train_teacher.py --model resnet110
    python train_teacher.py --dataset digits --epochs 15 --lr_decay_epochs 10  # resnet14, the digits default

The checkpoint is written where train_student.py finds it without --path_t. Rerunning the same
command resumes an interrupted teacher, or says it is finished; other flags in the same folder
stop with an error (use --trial N for a second teacher of the same architecture).
"""

from __future__ import annotations

from core.errors import run_main
from helper.config import parse_teacher_args
from helper.run import run_teacher


def main(argv: list[str] | None = None) -> None:
    run_teacher(parse_teacher_args(argv))


if __name__ == "__main__":
    run_main(main)
