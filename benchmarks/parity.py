#!/usr/bin/env python3
"""Train the same students with the published CKD code and with this project, side by side.

    python benchmarks/parity.py --published /path/to/ckd --data_folder DATA --path_t T/resnet20_vanilla/ckpt_epoch_240.pth \
        --methods kd,ce,mixup,ckd --seeds 1,2,3 --subset_size 1000 --out parity_out
    python benchmarks/parity.py ... --dry-run          # print every command (and which results are cached)
    python benchmarks/parity.py ... --table_only       # the table from the results already in --out

``--published`` is a plain checkout of github.com/alextxu/ckd (not part of this repository);
``--data_folder`` holds ``cifar-100-python/`` (scripts/export_cifar_format.py writes one from any data set
of this project, e.g. ``--dataset digits``); ``--path_t`` is a teacher in RepDistiller format inside a
folder named ``{arch}_vanilla/``. Both sides get the same student, teacher, subset size, seed and
schedule (``--patience``, ``--lr_decay_times``, ``--epochs``).

Each run is a fresh Python process, because both code bases have packages named ``dataset``, ``helper``
and ``models``: the published side runs ``benchmarks/parity_worker.py`` (the published ``main()`` in-process,
on the CPU when there is no GPU, with W&B and TensorBoard stood in; see that file), this project's side
runs ``train_student.py --dataset cifar100 ... --device cpu --save_dir OUT/project_save`` and reads its
``results.json``. Both are single-threaded (``OMP_NUM_THREADS=1``), W&B is off.

Writes ``OUT/{side}/{method}_seed{seed}.json`` per run (an existing one made with the same flags is
reused, so an interrupted table resumes; one made with other flags stops the script), a log per run in
``OUT/logs/``, and the table (method | published mean ± std (n) | project mean ± std (n) | difference,
with the per-seed values) to stdout and ``OUT/parity.md``. Test accuracy is the one each code reports:
the test accuracy of the weights with the best validation accuracy.
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
import concurrent.futures
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError, run_main
from helper.options import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    SEED,
    Number,
    OneLineParser,
    PathKind,
    check_architecture,
    parse_list,
)

ROOT = Path(__file__).resolve().parents[1]

SIDES = ("published", "project")
# method -> train_student.py flags; the flags mean the same in both code bases
METHODS: dict[str, list[str]] = {
    "kd": ["--w_kd", "1"],
    "ce": ["--w_kd", "0"],
    "mixup": ["--relational", "mixup", "--w_kd", "0"],
    "ckd": ["--relational", "ckd", "--w_kd", "0"],
    "cutmix": ["--relational", "cutmix", "--w_kd", "0"],
    "rkd+kd": ["--relational", "rkd", "--w_kd", "1"],
    "dist+kd": ["--relational", "dist", "--w_kd", "1"],
    "crd+kd": ["--relational", "crd", "--w_kd", "1"],
}
WORKER = Path(__file__).resolve().parent / "parity_worker.py"
PUBLISHED_PLACEHOLDER = "PUBLISHED_CKD_CHECKOUT"
CIFAR_FILES = ("train", "test", "meta")


@dataclass
class Job:
    """One (side, method, seed) run: the command, where it runs and where its numbers go."""

    side: str
    method: str
    seed: int
    flags: list[str]  # the train_student.py flags of this run
    command: list[str]
    cwd: Path
    result: Path
    log: Path
    project_results_dir: Path | None = None  # project side: the save_dir its results.json lands under
    pythonpath: str | None = None  # published side: the checkout its worker imports from

    @property
    def label(self) -> str:
        return f"{self.side} {self.method} seed {self.seed}"


def comma_list(flag: str, example: str) -> Callable[[str], list[str]]:
    """The ``type=`` of a comma-separated flag: an empty value, an empty item or a repeated one is refused in one
    sentence (helper.options.parse_list)."""
    def parse(text: str) -> list[str]:
        return parse_list(flag, text, example, str)
    return parse


def teacher_arch(path_t: Path) -> str:
    """``.../resnet20_vanilla/ckpt_epoch_240.pth`` -> ``resnet20`` (the RepDistiller folder convention)."""
    folder = path_t.parent.name
    if not folder.endswith("_vanilla") or folder == "_vanilla":
        raise UserError(f"--path_t must lie in a folder named ARCH_vanilla (as RepDistiller saves teachers), got '{folder}'; "
                        "move the checkpoint into e.g. resnet20_vanilla/")
    return folder[: -len("_vanilla")]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="parity.py", description="Published CKD code vs this project, same data/teacher/schedule.")
    parser.add_argument("--published", type=PathKind("folder", "--published"), default=None,
                        help="a plain checkout of alextxu/ckd (needed for the published side)")
    parser.add_argument("--data_folder", type=PathKind("folder", "--data_folder"), required=True, help="folder holding cifar-100-python/")
    parser.add_argument("--path_t", type=PathKind("maybe_file", "--path_t"), required=True,
                        help="teacher checkpoint in ARCH_vanilla/ (RepDistiller format)")
    parser.add_argument("--model_s", default="resnet8", help="student architecture")
    parser.add_argument("--methods", type=comma_list("--methods", "kd,ckd"), default=["kd", "ce", "mixup", "ckd"],
                        help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--seeds", default="1,2,3", help="comma list of seeds (each 0 to 2**63 - 1)")
    parser.add_argument("--subset_size", type=Number(int, low=2), default=1000, help="training images drawn (train + validation)")
    parser.add_argument("--sides", type=comma_list("--sides", "published,project"), default=list(SIDES),
                        help="comma list of published, project")
    parser.add_argument("--patience", type=NON_NEGATIVE_INT, default=10, help="pseudo-epochs without improvement before a decay")
    parser.add_argument("--lr_decay_times", type=POSITIVE_INT, default=3, help="passed as --lr_decay_times to both sides")
    parser.add_argument("--epochs", type=POSITIVE_INT, default=200, help="maximum pseudo-epochs")
    parser.add_argument("--out", type=PathKind("output", "--out"), required=True, help="folder for the per-run JSONs, logs and parity.md")
    parser.add_argument("--project", type=PathKind("folder", "--project"), default=ROOT,
                        help="checkout of this project whose train_student.py runs")
    parser.add_argument("--jobs", type=POSITIVE_INT, default=1, help="runs at the same time")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--table_only", action="store_true",
                        help="print and write the table from the per-run JSONs already in --out, run nothing")
    return parser


def check_args(opt: argparse.Namespace) -> None:
    check_architecture(opt.model_s, "model_s")
    unknown = [m for m in opt.methods if m not in METHODS]
    if unknown or not opt.methods:
        raise UserError(f"unknown --methods {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    bad_sides = [s for s in opt.sides if s not in SIDES]
    if bad_sides or not opt.sides:
        raise UserError(f"unknown --sides {', '.join(bad_sides) or '(none)'}; choose from published, project")
    opt.seeds = parse_list("--seeds", opt.seeds, "1,2,3", int, "whole numbers")
    for seed in opt.seeds:
        SEED.check("seeds", seed)
    opt.model_t = teacher_arch(opt.path_t)


def check_inputs(opt: argparse.Namespace) -> None:
    """Before a real run: every input the commands name exists."""
    if "published" in opt.sides:
        if opt.published is None:
            raise UserError("the published side needs --published, a checkout of github.com/alextxu/ckd "
                            "(or pass --sides project)")
        if not (opt.published / "train_student.py").is_file():
            raise UserError(f"{opt.published} has no train_student.py; pass a checkout of github.com/alextxu/ckd as --published")
    missing = [name for name in CIFAR_FILES if not (opt.data_folder / "cifar-100-python" / name).is_file()]
    if missing:
        raise UserError(f"{opt.data_folder}/cifar-100-python lacks {', '.join(missing)}; "
                        "write one with scripts/export_cifar_format.py --out DATA_FOLDER")
    if not opt.path_t.is_file():
        raise UserError(f"teacher checkpoint {opt.path_t} does not exist; train one with train_teacher.py --dataset cifar100")
    if "project" in opt.sides and not (opt.project / "train_student.py").is_file():
        raise UserError(f"{opt.project} has no train_student.py; pass this project's checkout as --project")


def common_flags(opt: argparse.Namespace, method: str, seed: int) -> list[str]:
    """Flags both train_student.py scripts get for one run (absolute paths: the runs change directory)."""
    return ["--model_s", opt.model_s, "--model_t", opt.model_t, "--path_t", str(opt.path_t),
            "--subset_size", str(opt.subset_size), "--seed", str(seed),
            "--patience", str(opt.patience), "--lr_decay_times", str(opt.lr_decay_times), "--epochs", str(opt.epochs),
            *METHODS[method]]


def make_job(opt: argparse.Namespace, side: str, method: str, seed: int) -> Job:
    result = opt.out / side / f"{method}_seed{seed}.json"
    log = opt.out / "logs" / f"{side}_{method}_seed{seed}.log"
    meta = json.dumps({"side": side, "method": method, "seed": seed}, sort_keys=True)
    if side == "published":
        # --model_t: the published parser looks up a teacher for --model_s before it reads --path_t, and
        # knows only resnet32/wrn_16_2/vgg8; with --path_t given it then takes the name from the path anyway
        flags = [*common_flags(opt, method, seed), "--dataset", "cifar100", "--num_workers", "0"]
        published = str(opt.published) if opt.published is not None else PUBLISHED_PLACEHOLDER
        # -P and PYTHONPATH=<published>: the worker imports the published packages, never this project's
        command = [sys.executable, "-P", str(WORKER), "--published", published, "--data_folder", str(opt.data_folder),
                   "--result", str(result), "--scratch_root", str(opt.out / "published_work"), "--meta", meta, "--", *flags]
        return Job(side, method, seed, flags, command, opt.out, result, log, pythonpath=published)
    save_dir = opt.out / "project_save"
    flags = [*common_flags(opt, method, seed), "--dataset", "cifar100", "--data_folder", str(opt.data_folder),
             "--save_dir", str(save_dir), "--device", "cpu"]
    command = [sys.executable, str(opt.project / "train_student.py"), *flags]
    return Job(side, method, seed, flags, command, opt.project, result, log, project_results_dir=save_dir)


def cached_result(job: Job) -> dict[str, Any] | None:
    """The JSON of an earlier run of exactly this job, or None; a JSON made with other flags is an error."""
    if not job.result.is_file():
        return None
    try:
        data = json.loads(job.result.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{job.result} is unreadable ({err}); delete it to rerun that run") from err
    if data.get("flags") != job.flags:
        raise UserError(f"{job.result} was made with other flags ({shlex.join(data.get('flags') or [])}); "
                        "delete it or choose another --out")
    return data


CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled", "WANDB_SILENT": "true",
             "PYTHONUNBUFFERED": "1"}


def child_env(job: Job) -> dict[str, str]:
    """The run's environment: one thread; PYTHONPATH only the published checkout (published side) or unset, so the
    two code bases never see each other's packages."""
    env = {**os.environ, **CHILD_ENV}
    env.pop("PYTHONPATH", None)
    if job.pythonpath is not None:
        env["PYTHONPATH"] = job.pythonpath
    return env


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def project_results_path(log_text: str) -> Path | None:
    """The ``results: PATH`` line train_student.py prints last."""
    for line in reversed(log_text.splitlines()):
        if line.startswith("results: "):
            return Path(line[len("results: "):].strip())
    return None


def collect_project_result(job: Job) -> dict[str, Any]:
    """Turn this project's results.json into the per-run JSON (same fields as the published side)."""
    path = project_results_path(job.log.read_text(errors="replace"))
    if path is None or not path.is_file():
        raise RuntimeError(f"train_student.py printed no results path; see {job.log}")
    results = json.loads(path.read_text())
    keys = ("test_acc", "test_acc_top5", "test_loss", "best_val_acc", "teacher_acc", "teacher_calls", "pseudo_epochs",
            "steps", "wall_time_s", "n_train", "n_val")
    return {"side": job.side, "method": job.method, "seed": job.seed, **{k: results.get(k) for k in keys},
            "results_json": str(path), "flags": job.flags}


def run_job(job: Job) -> tuple[Job, dict[str, Any] | None, str]:
    """Run one job to completion; returns (job, its numbers or None, a one-line status)."""
    job.log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(job.log, "w") as log:
        log.write(f"# cwd: {job.cwd}\n# {shlex.join(job.command)}\n")
        log.flush()
        proc = subprocess.run(job.command, cwd=job.cwd, env=child_env(job), stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, check=False)
    elapsed = time.time() - start
    if proc.returncode != 0:
        return job, None, f"failed: {job.label} (exit code {proc.returncode}, {elapsed:.0f}s); see {job.log}"
    try:
        data = collect_project_result(job) if job.side == "project" else json.loads(job.result.read_text())
    except (OSError, ValueError, RuntimeError) as err:
        return job, None, f"failed: {job.label} ({err})"
    data["harness_wall_s"] = round(elapsed, 1)
    write_json_atomic(data, job.result)
    return job, data, f"done: {job.label}: test_acc {data['test_acc']:.2f} ({elapsed:.0f}s)"


# ---------------------------------------------------------------- table


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f} (1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)})"


def per_seed(results: dict[int, float]) -> str:
    return ", ".join(f"s{seed} {acc:.2f}" for seed, acc in sorted(results.items())) or "—"


def format_table(results: dict[tuple[str, str, int], dict[str, Any]], methods: list[str]) -> str:
    """Markdown table of test accuracy: method | published | project | difference | per-seed values."""
    lines = ["| method | published mean ± std (n) | project mean ± std (n) | difference (project − published) "
             "| published per seed | project per seed |",
             "|---|---|---|---|---|---|"]
    for method in methods:
        by_side = {side: {seed: float(r["test_acc"]) for (s, m, seed), r in results.items() if s == side and m == method}
                   for side in SIDES}
        pub, proj = list(by_side["published"].values()), list(by_side["project"].values())
        diff = f"{statistics.mean(proj) - statistics.mean(pub):+.2f}" if pub and proj else "—"
        lines.append(f"| {method} | {mean_std(pub)} | {mean_std(proj)} | {diff} | "
                     f"{per_seed(by_side['published'])} | {per_seed(by_side['project'])} |")
    return "\n".join(lines)


def format_report(opt: argparse.Namespace, results: dict[tuple[str, str, int], dict[str, Any]]) -> str:
    teacher = {side: sorted({round(float(r["teacher_acc"]), 2) for (s, _, _), r in results.items()
                             if s == side and r.get("teacher_acc") is not None}) for side in SIDES}
    header = [
        f"Test accuracy (%) of the best-validation weights: student {opt.model_s}, teacher {opt.model_t} "
        f"({opt.path_t}), data {opt.data_folder}, subset {opt.subset_size}, patience {opt.patience}, "
        f"lr_decay_times {opt.lr_decay_times}, epochs {opt.epochs}.",
        "Teacher test accuracy as each side measured it: "
        + "; ".join(f"{side} {', '.join(f'{t:.2f}' for t in teacher[side]) or '—'}" for side in SIDES) + ".",
        "",
    ]
    return "\n".join(header) + format_table(results, opt.methods) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """parity.py's flags, checked before any work (raises UserError; the inputs of a real run: :func:`check_inputs`)."""
    opt = build_parser().parse_args(argv)
    check_args(opt)
    return opt


def main(argv: list[str] | None = None) -> int:
    opt = parse_args(argv)
    opt.data_folder, opt.path_t, opt.out = opt.data_folder.resolve(), opt.path_t.resolve(), opt.out.resolve()
    opt.project = opt.project.resolve()
    if opt.published is not None:
        opt.published = opt.published.resolve()
    jobs = [make_job(opt, side, method, seed) for side in opt.sides for method in opt.methods for seed in opt.seeds]
    results: dict[tuple[str, str, int], dict[str, Any]] = {}
    todo: list[Job] = []
    for job in jobs:
        data = cached_result(job)
        if data is not None:
            results[(job.side, job.method, job.seed)] = data
        else:
            todo.append(job)
    if opt.dry_run:
        for job in jobs:
            key = (job.side, job.method, job.seed)
            if key in results:
                print(f"# {job.label}: cached {job.result} (test_acc {float(results[key]['test_acc']):.2f})")
            else:
                print(f"# {job.label} -> {job.result}")
                env = " ".join(f"{k}={v}" for k, v in CHILD_ENV.items())
                path = f"PYTHONPATH={shlex.quote(job.pythonpath)}" if job.pythonpath is not None else "-u PYTHONPATH"
                print(f"cd {shlex.quote(str(job.cwd))} && env {path} {env} {shlex.join(job.command)}")
        return 0
    if opt.table_only:
        todo = []
    if todo:
        check_inputs(opt)
    print(f"parity: {len(jobs)} runs, {len(jobs) - len(todo)} cached, {len(todo)} to run with --jobs {opt.jobs} "
          f"(logs in {opt.out / 'logs'})", flush=True)
    failures = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=opt.jobs) as pool:
        futures = [pool.submit(run_job, job) for job in todo]
        for future in concurrent.futures.as_completed(futures):
            job, data, status = future.result()
            print(status, flush=True)
            if data is None:
                failures += 1
            else:
                results[(job.side, job.method, job.seed)] = data
    report = format_report(opt, results)
    opt.out.mkdir(parents=True, exist_ok=True)
    (opt.out / "parity.md").write_text(report)
    print(report, end="", flush=True)
    print(f"table: {opt.out / 'parity.md'}", flush=True)
    if failures:
        print(f"{failures} run(s) failed; their logs are in {opt.out / 'logs'}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
