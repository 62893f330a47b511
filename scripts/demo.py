"""Offline end-to-end demo on real data (scikit-learn's bundled handwritten digits).

    make demo            # or: python scripts/demo.py [--out demo_out] [--quick]

1. trains a small teacher (resnet14) on the digits training split, once (cached in --out), with the one digits
   teacher recipe of the docs (``DIGITS_TEACHER_FLAGS``: README "From Python", docs/runs.md, docs/teachers.md);
2. runs the CE-only student, KD, mixup, CKD and CKD with ``--calibrate train_mean`` (resnet8 students) at two
   subset sizes x 3 seeds,
   each run querying its teacher once per training image (the CE-only student not at all), with
   random crops only (horizontal flips would turn some digits into others);
3. prints the summary (test accuracy mean ± sd and 95 % interval over seeds, lr chosen on validation; the paired
   differences of every method to kd, seed by seed on the same subsets, with the seeds-needed line of each comparison
   that is not distinguishable) and writes the accuracy-vs-teacher-calls plot.

``--calibration-study`` instead runs TTM (at its default weight and at a tenth of it), KD with logit standardization,
MLKD and CKD, each with and without ``--calibrate train_mean`` (subset 400, seeds 1-2), and prints each one's test
accuracy beside its calibrated run's: the measurement of docs/calibration.md.

Finished runs are reused, so an interrupted demo continues where it stopped. Each recipe keeps its own folders
inside --out (``save/`` and ``logs/``; ``save_quick/``, ``logs_quick/``; ``save_published/``, ``logs_published/``),
so a quick or published-schedule demo never hands its teacher or its students to another.
"""

from __future__ import annotations

try:  # the project itself, installed by `make venv`: without it, one sentence instead of a traceback
    import core  # noqa: F401
except ModuleNotFoundError as err:
    import sys

    print(f"error: this Python cannot import the project ({err}); run `make venv` and use .venv/bin/python, or run "
          "`pip install --no-deps -e .` in the repository root", file=sys.stderr)
    raise SystemExit(2) from None

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

TEACHER = "resnet14"
# the digits teacher of the demo and of every digits recipe in the docs (tests/test_docs.py checks them)
DIGITS_TEACHER_FLAGS = ("--model", TEACHER, "--dataset", "digits", "--epochs", "15", "--lr_decay_epochs", "10")
QUICK_TEACHER_FLAGS = ("--model", TEACHER, "--dataset", "digits", "--epochs", "2")  # 2 epochs never reach a decay
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
# --calibration-study: each method as published and with --calibrate train_mean (docs/calibration.md)
STUDY = {
    "ttm": ["--relational=ttm", "--w_kd=0"],  # its default weight, 45, barely trains on digits in this schedule
    "ttm(w=4.5)": ["--relational=ttm", "--w_kd=0", "--w_rel_scale=0.1"],
    "kd+ls": ["--relational=None", "--w_kd=9", "--kd_T=2", "--logit_stand=True"],
    "mlkd": ["--relational=mlkd", "--w_kd=0", "--teacher_views=2"],
    "ckd": ["--relational=ckd", "--pos_and_neg=2"],
}
STUDY_SIZE, STUDY_SEEDS = 400, (1, 2)


def _quiet_call(fn, argv: list[str], log_path: Path) -> None:
    """Run an entry point in this process with its output going to ``log_path``."""
    from core import fs

    fs.make_folder(log_path.parent, location="--out")
    fs.require_regular_file(log_path, "the log")  # a FIFO there would block the open below
    with fs.checked(log_path, "write", location="--out"), open(log_path, "w") as log, contextlib.redirect_stdout(log):
        fn(argv)


def print_calibration_study(results: dict[tuple[str, int], dict], methods: list[str], seeds: tuple[int, ...]) -> None:
    """A Markdown table: each method's test_acc as published, with --calibrate train_mean, and their difference."""
    print(f"\n| method | {' | '.join(f'seed {s}: published / --calibrate' for s in seeds)} | mean difference |")
    print("|---|" + "---:|" * (len(seeds) + 1))
    for method in methods:
        pairs = [(results[(method, s)]["test_acc"], results[(f"{method}+cal", s)]["test_acc"]) for s in seeds]
        cells = " | ".join(f"{a:.2f} / {b:.2f}" for a, b in pairs)
        print(f"| {method} | {cells} | {sum(b - a for a, b in pairs) / len(pairs):+.2f} |")
    teacher = results[(methods[0], seeds[0])]["teacher_acc"]
    print(f"\n(test accuracy %, digits subset {STUDY_SIZE}, teacher {teacher:.2f}%)", flush=True)


def build_parser() -> argparse.ArgumentParser:
    from helper.options import OneLineParser, PathKind, RawDescriptionHelpFormatter

    parser = OneLineParser(prog="demo.py", description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=PathKind("output", "--out"), default="demo_out",
                        help="folder for checkpoints, runs, logs, table and plot")
    parser.add_argument("--quick", action="store_true", help="one seed, one size, few epochs (a smoke test)")
    parser.add_argument("--published-schedule", action="store_true",
                        help="ce, kd, ckd and ckd+cal at subset 400 with the published schedule (--patience 50, "
                             "--lr_decay_times 3, --epochs 1000), reported as test_acc and test_acc_calibrated")
    parser.add_argument("--calibration-study", action="store_true",
                        help="ttm, kd+ls, mlkd and ckd, each with and without --calibrate train_mean (subset 400, seeds "
                             "1-2): test_acc beside the calibrated run's (docs/calibration.md)")
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

    if "OMP_NUM_THREADS" not in os.environ:  # a thread count the caller set wins (on a busy machine 1 is much faster)
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = Path(args.out)
    recipe = "_quick" if args.quick else "_published" if args.published_schedule else ""
    save_dir, logs = out / f"save{recipe}", out / f"logs{recipe}"
    seeds = SEEDS[:1] if args.quick else SEEDS
    sizes = SUBSET_SIZES[:1] if args.quick else SUBSET_SIZES
    methods = list(METHODS)
    flags_of = dict(METHODS)
    teacher_flags = list(QUICK_TEACHER_FLAGS if args.quick else DIGITS_TEACHER_FLAGS)
    student_epochs = ["--epochs", "2"] if args.quick else ["--epochs", "40", "--patience", "8", "--lr_decay_times", "2"]
    if args.published_schedule:  # the train_student.py defaults are the published schedule
        sizes, methods, student_epochs = (400,), ["ce", "kd", "ckd", "ckd+cal"], []
    if args.calibration_study:
        flags_of = {**STUDY, **{f"{m}+cal": [*f, "--calibrate=train_mean"] for m, f in STUDY.items()}}
        sizes, seeds, methods = (STUDY_SIZE,), STUDY_SEEDS[:1] if args.quick else STUDY_SEEDS, list(flags_of)
    start = time.perf_counter()
    with fs.removing_new_folders(out):  # a demo refused at its first write leaves no empty --out behind
        teacher_path = teacher_checkpoint_path(save_dir, "digits", TEACHER)
        if teacher_path.is_file():
            print(f"[teacher] reusing {teacher_path}", flush=True)
        else:
            epochs = teacher_flags[teacher_flags.index("--epochs") + 1]
            print(f"[teacher] training {TEACHER} on the digits training split ({epochs} epochs) ...", flush=True)
            _quiet_call(train_teacher.main, [*teacher_flags, "--save_dir", str(save_dir), "--device", "cpu"],
                        logs / "teacher.log")
            print(f"[teacher] done in {time.perf_counter() - start:.0f}s: {teacher_path}", flush=True)
        runs = [(m, n, s) for n in sizes for m in methods for s in seeds]
        results: dict[tuple[str, int], dict] = {}
        for i, (method, size, seed) in enumerate(runs, 1):
            t0 = time.perf_counter()
            log = logs / f"{method}_n{size}_seed{seed}.log"
            _quiet_call(train_student.main, ["--model_s", STUDENT, "--model_t", TEACHER, "--dataset", "digits",
                                             "--subset_size", str(size), "--seed", str(seed), "--batch_size", "32",
                                             "--use_DA", "1",
                                             "--save_dir", str(save_dir), "--device", "cpu", *student_epochs,
                                             *flags_of[method]], log)
            result_line = fs.read_text(log).strip().splitlines()[-1]
            print(f"[{i:2d}/{len(runs)}] {method:7s} subset {size:4d} seed {seed}: {time.perf_counter() - t0:5.1f}s "
                  f"({result_line})", flush=True)
            results[(method, seed)] = json.loads(fs.read_text(Path(result_line.removeprefix("results: "))))
        if args.calibration_study:
            print_calibration_study(results, list(STUDY), seeds)
        else:
            summarize.main([str(save_dir / "student"), "--out", str(out)])
        if args.published_schedule:
            summarize.main([str(save_dir / "student"), "--out", str(out / "calibrated"), "--metric", "test_acc_calibrated"])
    print(f"demo finished in {time.perf_counter() - start:.0f}s; logs in {logs}", flush=True)
    return 0


if __name__ == "__main__":
    from core.errors import run_main

    sys.exit(run_main(main))
