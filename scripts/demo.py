"""Offline end-to-end demo on real data (scikit-learn's bundled handwritten digits).

    make demo            # or: python scripts/demo.py [--out demo_out] [--quick]

1. trains a small teacher (resnet14) on the digits training split, once (cached in --out);
2. runs the CE-only student, KD, mixup, CKD and CKD with ``--calibrate train_mean`` (resnet8 students) at two
   subset sizes x 3 seeds,
   each run querying its teacher once per training image (the CE-only student not at all), with
   random crops only (horizontal flips would turn some digits into others);
3. prints the summary table (test accuracy mean ± std over seeds, lr chosen on validation) and
   writes the accuracy-vs-teacher-calls plot.

Finished runs are reused, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

TEACHER = "resnet14"
STUDENT = "resnet8"
METHODS = {
    "ce": ["--relational=None", "--w_kd=0"],
    "kd": ["--relational=None", "--w_kd=1"],
    "mixup": ["--relational=mixup", "--w_kd=0"],
    "ckd": ["--relational=ckd", "--pos_and_neg=2"],
    "ckd+cal": ["--relational=ckd", "--pos_and_neg=2", "--calibrate=train_mean"],
}
SUBSET_SIZES = (200, 400)
SEEDS = (1, 2, 3)


def _quiet_call(fn, argv: list[str], log_path: Path) -> None:
    """Run an entry point in this process with its output going to ``log_path``."""
    from core import fs

    fs.make_folder(log_path.parent, location="--out")
    fs.require_regular_file(log_path, "the log")  # a FIFO there would block the open below
    with fs.checked(log_path, "write", location="--out"), open(log_path, "w") as log, contextlib.redirect_stdout(log):
        fn(argv)


def build_parser() -> argparse.ArgumentParser:
    from helper.options import OneLineParser, PathKind, RawDescriptionHelpFormatter

    parser = OneLineParser(prog="demo.py", description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=PathKind("output", "--out"), default="demo_out",
                        help="folder for checkpoints, runs, logs, table and plot")
    parser.add_argument("--quick", action="store_true", help="one seed, one size, few epochs (a smoke test)")
    parser.add_argument("--published-schedule", action="store_true",
                        help="ce, kd, ckd and ckd+cal at subset 400 with the published schedule (--patience 50, "
                             "--lr_decay_times 3, --epochs 1000), reported as test_acc and test_acc_calibrated")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")

    import torch

    import train_student
    import train_teacher
    from core import fs
    from helper.options import teacher_checkpoint_path
    from scripts import summarize

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = Path(args.out)
    save_dir = out / "save"
    logs = out / "logs"
    seeds = SEEDS[:1] if args.quick else SEEDS
    sizes = SUBSET_SIZES[:1] if args.quick else SUBSET_SIZES
    methods = list(METHODS)
    teacher_epochs = "2" if args.quick else "15"
    student_epochs = ["--epochs", "2"] if args.quick else ["--epochs", "40", "--patience", "8", "--lr_decay_times", "2"]
    if args.published_schedule:  # the train_student.py defaults are the published schedule
        sizes, methods, student_epochs = (400,), ["ce", "kd", "ckd", "ckd+cal"], []
    start = time.perf_counter()
    with fs.removing_new_folders(out):  # a demo refused at its first write leaves no empty --out behind
        teacher_path = teacher_checkpoint_path(save_dir, "digits", TEACHER)
        if teacher_path.is_file():
            print(f"[teacher] reusing {teacher_path}", flush=True)
        else:
            print(f"[teacher] training {TEACHER} on the digits training split ({teacher_epochs} epochs) ...", flush=True)
            decay = [] if args.quick else ["--lr_decay_epochs", "10"]  # 2 quick epochs never reach a decay
            _quiet_call(train_teacher.main, ["--model", TEACHER, "--dataset", "digits", "--epochs", teacher_epochs,
                                             *decay, "--save_dir", str(save_dir), "--device", "cpu"],
                        logs / "teacher.log")
            print(f"[teacher] done in {time.perf_counter() - start:.0f}s: {teacher_path}", flush=True)
        runs = [(m, n, s) for n in sizes for m in methods for s in seeds]
        for i, (method, size, seed) in enumerate(runs, 1):
            t0 = time.perf_counter()
            log = logs / f"{method}_n{size}_seed{seed}.log"
            _quiet_call(train_student.main, ["--model_s", STUDENT, "--model_t", TEACHER, "--dataset", "digits",
                                             "--subset_size", str(size), "--seed", str(seed), "--batch_size", "32",
                                             "--use_DA", "1",
                                             "--save_dir", str(save_dir), "--device", "cpu", *student_epochs,
                                             *METHODS[method]], log)
            result_line = fs.read_text(log).strip().splitlines()[-1]
            print(f"[{i:2d}/{len(runs)}] {method:7s} subset {size:4d} seed {seed}: {time.perf_counter() - t0:5.1f}s "
                  f"({result_line})", flush=True)
        summarize.main([str(save_dir / "student"), "--out", str(out)])
        if args.published_schedule:
            summarize.main([str(save_dir / "student"), "--out", str(out / "calibrated"), "--metric", "test_acc_calibrated"])
    print(f"demo finished in {time.perf_counter() - start:.0f}s; logs in {logs}", flush=True)
    return 0


if __name__ == "__main__":
    from core.errors import run_main

    sys.exit(run_main(main))
