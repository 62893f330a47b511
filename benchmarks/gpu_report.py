#!/usr/bin/env python3
"""The Python half of ``benchmarks/gpu_check.sh``: set-up, an instrumented training run, and the report.

    python benchmarks/gpu_report.py prepare --work WORK --device cuda --model_t resnet110 --n_train 5000 --n_test 10000
    python benchmarks/gpu_report.py timed-run --timing FILE -- TRAIN_STUDENT FLAGS...
    python benchmarks/gpu_report.py report --work WORK --out OUT

``prepare`` writes the provenance (torch, CUDA, cuDNN, device name), a CIFAR-100-format data set of random images
(``WORK/data/cifar-100-python``, the official pickle layout, written by ``scripts/export_cifar_format.py``) and a
randomly initialised ``--model_t`` teacher in RepDistiller's checkpoint format, with BatchNorm statistics taken from
the data (as ``benchmarks/bench.py`` does; without them a deep random ResNet's eval logits overflow the losses).

``timed-run`` runs ``train_student.py`` in this process and times, without changing the trainer, the parts of a
student run: the training loop (``helper.engine.train_epochs`` as the trainer calls it; each epoch ends with a host
sync, and a device sync is added after the loop), validation + logging + schedule (``StudentRun.end_epoch``),
checkpoints (``save_last``, ``_save_best``), set-up and the final test evaluation (exclusive times: a part called
inside another counts only once, so the loop's time is its steps alone). A part the trainer no longer has is reported
as missing, not fatal.

``digits-accuracy`` trains the demo's digits teacher and its students (kd, ckd, mixup at subset 400, 3 seeds, the
demo's schedule) on the device, plain and with ``--amp --channels_last``, and records each run's test accuracy: the
evidence for (or against) making the fast path the CUDA default.

``report`` reads the steps ``gpu_check.sh`` recorded (``WORK/steps.jsonl``), their logs and run folders, and writes
``OUT/gpu_check.json`` and ``OUT/gpu_check.md``.
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
import json
import math
import os
import platform
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# StudentRun methods timed by timed-run, and the part of the run each belongs to
TIMED_METHODS = {
    "_prepare_data": "setup", "_prepare_teacher_cache": "setup", "_prepare_student": "setup",
    "train_epochs": "train", "end_epoch": "validate_log", "save_last": "checkpoint", "_save_best": "checkpoint",
    "_finish": "finish",
}
# results.json metrics compared by the deterministic-resume check (bit-identical expected)
RESUME_METRICS = ("test_acc", "test_acc_top5", "test_loss", "test_acc_calibrated", "calibration_shift_norm", "best_val_acc",
                  "best_val_acc_top5", "best_val_loss", "best_epoch", "pseudo_epochs", "steps", "lr_decays", "teacher_calls")
# acceptance targets of issue #24
STEP_BOUND_TARGET = 0.9
DATA_STEP_TARGET = 10.0


# ------------------------------------------------------------------------------------------ prepare
def provenance(device_name: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "python_executable": sys.executable,
                            "platform": platform.platform(), "torch_version": str(torch.__version__),
                            "torch_cuda_version": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                            "cpu_count": os.cpu_count(), "requested_device": device_name}
    try:
        info["cudnn_version"] = torch.backends.cudnn.version()
    except Exception:  # no cuDNN in this build
        info["cudnn_version"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                    device_memory_gb=round(props.total_memory / 2**30, 1), device_capability=f"{props.major}.{props.minor}")
    else:
        info["device_name"] = "cpu"
    try:
        from helper.engine import git_commit

        info["git_commit"] = git_commit()
    except Exception as err:
        info["git_commit"] = f"unknown ({err})"
    return info


def make_data(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random uint8 images in the official CIFAR-100 pickle layout; every class present in both splits."""
    import torch

    from dataset import CIFAR100_MEAN, CIFAR100_STD, ImageSet
    from scripts.export_cifar_format import export_cifar_format

    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> ImageSet:
        labels = torch.arange(n) % 100
        labels = labels[torch.randperm(n, generator=g)]
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        return ImageSet(images=images, labels=labels, num_classes=100, mean=CIFAR100_MEAN, std=CIFAR100_STD)

    return export_cifar_format(split(n_train), split(n_test), folder, source="gpu_check", force=True)


def make_teacher(path: Path, model_t: str, data_folder: Path, device_name: str, seed: int = 0) -> Path:
    """A randomly initialised ``model_t`` with BatchNorm statistics of the data, saved as train_teacher.py saves."""
    import torch

    from benchmarks.bench import CALIBRATION_IMAGES, calibrate_batchnorm
    from core.device import resolve_device
    from dataset import load_dataset
    from dataset.augment import DeviceAugment
    from models import model_dict

    device = resolve_device(device_name)
    train_set, _ = load_dataset("cifar100", str(data_folder), download=False)
    augment = DeviceAugment.for_images(train_set, 2, device)
    torch.manual_seed(seed)
    teacher = model_dict[model_t](num_classes=100).to(device)
    calibrate_batchnorm(teacher, train_set.images[:CALIBRATION_IMAGES].to(device), augment)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in teacher.state_dict().items()}
    torch.save({"model": state, "epoch": 240, "accuracy": 1.0}, path)
    return path


def cmd_prepare(args: argparse.Namespace) -> int:
    work = Path(args.work)
    out: dict[str, Any] = {}
    code = 0
    try:
        out["provenance"] = provenance(args.device)
    except Exception as err:
        out["provenance_error"] = f"{type(err).__name__}: {err}"
    for name, fn in (("data", lambda: make_data(work / "data", args.n_train, args.n_test)),
                     ("teacher", lambda: make_teacher(Path(args.teacher), args.model_t, work / "data", args.device))):
        start = time.perf_counter()
        try:
            out[name] = {"path": str(fn()), "seconds": time.perf_counter() - start}
        except Exception as err:
            traceback.print_exc()
            out[name] = {"error": f"{type(err).__name__}: {err}"}
            code = 1
            break
    out["data_sizes"] = {"n_train": args.n_train, "n_test": args.n_test}
    (work / "prepare.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out), flush=True)
    return code


# ------------------------------------------------------------------------------------------ timed-run
def cmd_timed_run(args: argparse.Namespace, argv: list[str]) -> int:
    """train_student.py in this process, with the StudentRun methods of TIMED_METHODS timed (exclusive times)."""
    import torch

    import train_student
    from core.errors import UserError
    from helper import student_trainer

    timing: dict[str, Any] = {"argv": argv, "seconds": {}, "calls": {}, "missing": []}
    stack: list[list[float]] = []  # [start, time spent in nested timed calls]

    def wrap(name: str) -> None:
        # the loop is a function of helper.engine that the trainer imported; the other parts are StudentRun methods
        owner = student_trainer if name == "train_epochs" else student_trainer.StudentRun
        original = getattr(owner, name, None)
        if original is None:
            timing["missing"].append(name)
            return

        def timed(*a: Any, **k: Any) -> Any:
            stack.append([time.perf_counter(), 0.0])
            try:
                result = original(*a, **k)
                if name == "train_epochs" and torch.cuda.is_available():
                    torch.cuda.synchronize()
                return result
            finally:
                start, nested = stack.pop()
                total = time.perf_counter() - start
                timing["seconds"][name] = timing["seconds"].get(name, 0.0) + total - nested
                timing["calls"][name] = timing["calls"].get(name, 0) + 1
                if stack:
                    stack[-1][1] += total

        setattr(owner, name, timed)

    for method in TIMED_METHODS:
        wrap(method)
    start = time.perf_counter()
    code = 0
    try:
        train_student.main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        timing["error"] = str(err)
        code = 2
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
        timing["error"] = f"SystemExit({err.code})"
    except BaseException as err:
        traceback.print_exc()
        timing["error"] = f"{type(err).__name__}: {err}"
        code = 1
    finally:
        timing["total_s"] = time.perf_counter() - start
        Path(args.timing).write_text(json.dumps(timing, indent=2))
    return code


# digits students of the accuracy check: the demo's methods and schedule (scripts/demo.py), subset 400
DIGITS_METHODS = {"kd": ["--relational=None", "--w_kd=1"], "ckd": ["--relational=ckd", "--pos_and_neg=2"],
                  "mixup": ["--relational=mixup", "--w_kd=0"]}
DIGITS_SCHEDULE = ["--patience", "8", "--lr_decay_times", "2"]  # and --epochs 40


def cmd_digits_accuracy(args: argparse.Namespace) -> int:
    """Digits students plain and with --amp --channels_last on ``--device``; test accuracies to ``--result``."""
    import contextlib
    import io
    import statistics

    import train_student
    import train_teacher

    save = Path(args.work) / "digits_save"
    seeds = list(range(1, args.seeds + 1))
    out: dict[str, Any] = {"device": args.device, "seeds": seeds, "runs": []}
    with contextlib.redirect_stdout(io.StringIO()):
        decay = ["--lr_decay_epochs", "10"] if args.teacher_epochs > 10 else []  # a decay --epochs never reaches is refused
        train_teacher.main(["--model", "resnet14", "--dataset", "digits", "--epochs", str(args.teacher_epochs),
                            *decay, "--save_dir", str(save), "--device", args.device])
    for variant, flags in (("plain", []), ("amp+channels_last", ["--amp", "--channels_last"])):
        for method in args.methods.split(","):
            method_flags = DIGITS_METHODS[method]
            for seed in seeds:
                argv = ["--model_s", "resnet8", "--model_t", "resnet14", "--dataset", "digits", "--subset_size", "400",
                        "--seed", str(seed), "--batch_size", "32", "--use_DA", "1", "--save_dir", str(save),
                        "--device", args.device, "--epochs", str(args.student_epochs), *DIGITS_SCHEDULE, *method_flags, *flags]
                start = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()) as log:
                    train_student.main(argv)
                results = json.loads(Path(log.getvalue().strip().splitlines()[-1].split("results: ", 1)[1]).read_text())
                out["runs"].append({"variant": variant, "method": method, "seed": seed, "test_acc": results["test_acc"],
                                    "seconds": time.perf_counter() - start})
                Path(args.result).write_text(json.dumps(out, indent=2))
    summary: dict[str, Any] = {}
    for run in out["runs"]:
        summary.setdefault(run["method"], {}).setdefault(run["variant"], []).append(run["test_acc"])
    out["summary"] = {m: {v: {"mean": statistics.mean(a), "std": statistics.stdev(a) if len(a) > 1 else 0.0, "n": len(a)}
                          for v, a in by_variant.items()} for m, by_variant in summary.items()}
    Path(args.result).write_text(json.dumps(out, indent=2))
    return 0


def digits_entry(work: Path) -> dict[str, Any] | None:
    path = work / "runs" / "digits_accuracy.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ------------------------------------------------------------------------------------------ report
def read_steps(work: Path) -> list[dict[str, Any]]:
    steps = []
    path = work / "steps.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                steps.append(json.loads(line))
            except ValueError:
                steps.append({"unparsed": line})
    return steps


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def last_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return None
    for line in reversed(text):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def results_path_of(log: Path) -> Path | None:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("results: "):
            return Path(line.removeprefix("results: ").strip())
    return None


def step_summary(step: dict[str, Any], work: Path) -> dict[str, Any]:
    """rc, seconds, command, status and (when it failed) the tail of its log."""
    ok = step.get("rc") == step.get("expected_rc", 0)
    status = "skipped" if step.get("skipped") else ("ok" if ok else ("timeout" if step.get("rc") in (124, 137) else "failed"))
    summary = {k: step.get(k) for k in ("rc", "expected_rc", "seconds", "cmd", "timeout_s", "skipped") if step.get(k) is not None}
    summary["status"] = status
    if status in ("failed", "timeout") and step.get("log"):
        summary["log_tail"] = log_tail(work / step["log"])
    return summary


def bench_entry(step: dict[str, Any], work: Path) -> dict[str, Any]:
    entry = {"name": step.get("name"), "label": step.get("label"), "variant": step.get("variant"), "flags": step.get("flags"),
             **step_summary(step, work)}
    if entry["status"] == "ok":
        result = last_json(work / step["log"]) if step.get("log") else None
        if result is None:
            entry["status"] = "failed"
            entry["error"] = "no JSON line at the end of the bench output"
            entry["log_tail"] = log_tail(work / step["log"])
        else:
            entry["result"] = result
            # the median of bench.py's per-round ratios (older bench output: the ratio of the best rates)
            entry["data_vs_step"] = result.get("data_vs_step", result["data_images_per_s"] / result["images_per_s"])
    return entry


def e2e_entry(step: dict[str, Any], work: Path) -> dict[str, Any]:
    entry = {"name": step.get("name"), "label": step.get("label"), "flags": step.get("flags"), **step_summary(step, work)}
    timing_file = work / step["timing"] if step.get("timing") else None
    if timing_file is not None and timing_file.is_file():
        timing = json.loads(timing_file.read_text())
        secs = timing.get("seconds", {})
        parts: dict[str, float] = {}
        for method, part in TIMED_METHODS.items():
            parts[part] = parts.get(part, 0.0) + secs.get(method, 0.0)
        entry["timing"] = {"parts_s": parts, "calls": timing.get("calls"), "total_s": timing.get("total_s"),
                           "missing_methods": timing.get("missing")}
        training_phase = parts["train"] + parts["validate_log"] + parts["checkpoint"]
        epochs = timing.get("calls", {}).get("end_epoch") or 0
        if training_phase > 0 and epochs:
            entry["seconds_per_pseudo_epoch"] = training_phase / epochs
            entry["train_loop_s_per_pseudo_epoch"] = parts["train"] / epochs
            entry["share_outside_train_step"] = 1 - parts["train"] / training_phase
        if timing.get("total_s"):
            entry["share_outside_train_step_incl_setup"] = 1 - parts["train"] / timing["total_s"]
    results = results_path_of(work / step["log"]) if step.get("log") else None
    if results is not None and results.is_file():
        res = json.loads(results.read_text())
        entry["results"] = {k: res.get(k) for k in ("test_acc", "best_val_acc", "pseudo_epochs", "steps", "wall_time_s",
                                                     "n_train", "device", "torch_version", "teacher_calls")}
        if res.get("steps") and entry.get("timing"):
            entry["train_loop_ms_per_step"] = 1000 * entry["timing"]["parts_s"]["train"] / res["steps"]
    return entry


def sweep_entry(step: dict[str, Any], work: Path) -> dict[str, Any]:
    entry = {"name": step.get("name"), "slots": step.get("slots"), "runs": step.get("runs"), **step_summary(step, work)}
    log = work / step["log"] if step.get("log") else None
    text = log.read_text(errors="replace") if log is not None and log.is_file() else ""
    per_run = [float(s) for s in re.findall(r"finished in ([0-9.]+) s", text)]
    entry["run_seconds"] = per_run
    summary = re.search(r"ran (\d+), skipped (\d+), failed (\d+)", text)
    if summary:
        entry["ran"], entry["skipped_runs"], entry["failed_runs"] = (int(g) for g in summary.groups())
    if per_run and step.get("seconds"):
        entry["runs_per_hour"] = 3600 * len(per_run) / step["seconds"]
    return entry


def compare_results(ref: Path, resumed: Path) -> dict[str, Any]:
    a, b = json.loads(ref.read_text()), json.loads(resumed.read_text())
    diff = {k: {"uninterrupted": a.get(k), "resumed": b.get(k)} for k in RESUME_METRICS
            if a.get(k) != b.get(k) and not (isinstance(a.get(k), float) and isinstance(b.get(k), float)
                                             and math.isnan(a[k]) and math.isnan(b[k]))}
    return {"metrics_identical": not diff, "diff": diff, "compared": list(RESUME_METRICS),
            "uninterrupted": {k: a.get(k) for k in RESUME_METRICS}}


def compare_weights(ref_dir: Path, resumed_dir: Path) -> dict[str, Any]:
    import torch

    a = torch.load(ref_dir / "best.pth", map_location="cpu", weights_only=True)["model"]
    b = torch.load(resumed_dir / "best.pth", map_location="cpu", weights_only=True)["model"]
    differing = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
    return {"best_weights_identical": not differing and set(a) == set(b), "differing_tensors": differing[:20]}


def determinism_entry(steps: list[dict[str, Any]], work: Path, variant: str) -> dict[str, Any] | None:
    mine = {s.get("name"): s for s in steps if s.get("step") == "determinism" and s.get("variant") == variant}
    if not mine:
        return None
    entry: dict[str, Any] = {"variant": variant, "env": next(iter(mine.values())).get("env", ""),
                             "steps": {name: step_summary(s, work) for name, s in mine.items()}}
    kill = mine.get("killed", {})
    entry["kill"] = {k: kill.get(k) for k in ("killed", "killed_after_s", "last_pth_seen", "finished_before_kill")}
    resume_log = work / mine["resumed"]["log"] if "resumed" in mine and mine["resumed"].get("log") else None
    if resume_log is not None and resume_log.is_file():
        found = re.search(r"resumed at pseudo-epoch (\d+) step (\d+) \(global step (\d+)\)", resume_log.read_text(errors="replace"))
        entry["resumed_from"] = ({"pseudo_epoch": int(found.group(1)), "step": int(found.group(2)),
                                  "global_step": int(found.group(3))} if found else None)
    warnings: list[str] = []
    for s in mine.values():
        log = work / s["log"] if s.get("log") else None
        if log is not None and log.is_file():
            for line in log.read_text(errors="replace").splitlines():
                if ("deterministic" in line or "CUBLAS_WORKSPACE_CONFIG" in line) and line.strip() not in warnings:
                    warnings.append(line.strip()[:400])
    entry["determinism_warnings"] = warnings[:10]  # ops torch warned about under --deterministic (warn_only)
    ref = results_path_of(work / mine["reference"]["log"]) if "reference" in mine else None
    res = results_path_of(resume_log) if resume_log is not None else None
    if ref is None or res is None or not ref.is_file() or not res.is_file():
        entry["result"] = "fail"
        entry["reason"] = "a run did not finish (see steps)"
        return entry
    try:
        entry.update(compare_results(ref, res))
        entry.update(compare_weights(ref.parent, res.parent))
    except Exception as err:
        entry["compare_error"] = f"{type(err).__name__}: {err}"
    interrupted = bool(kill.get("killed")) and not kill.get("finished_before_kill") and entry.get("resumed_from") is not None
    entry["interrupted_mid_run"] = interrupted
    entry["result"] = "pass" if (interrupted and entry.get("metrics_identical") and entry.get("best_weights_identical")) else "fail"
    if entry["result"] == "fail" and not interrupted:
        entry["reason"] = "the run was not killed mid-run (no resume happened)"
    return entry


def fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def ratio_cell(result: dict[str, Any], name: str) -> str:
    """A bench ratio as the median of its rounds with the interquartile range, or why it is not a result."""
    if result.get(f"{name}_error"):
        return "measurement error"
    spread = result.get(f"{name}_spread") or {}
    iqr = f" ({fmt(spread.get('q1'), '.2f')}–{fmt(spread.get('q3'), '.2f')})" if spread.get("n", 0) > 1 else ""
    return fmt(result.get(name), ".2f") + iqr


def markdown(report: dict[str, Any]) -> str:
    prov = report.get("provenance", {})
    lines = ["# gpu_check", "",
             f"device: {prov.get('device_name', '?')} ({prov.get('nvidia_smi', '').strip() or 'no nvidia-smi'}); "
             f"torch {prov.get('torch_version', '?')}, CUDA {prov.get('torch_cuda_version')}, cuDNN {prov.get('cudnn_version')}; "
             f"python {prov.get('python', '?')}; commit {prov.get('git_commit', '?')}; mode {report.get('mode')}; "
             f"total {fmt(report.get('total_s'), '.0f')} s", "",
             f"command: `{report.get('command', '')}`", "",
             "## Bench (`benchmarks/bench.py`)", "",
             "| method | variant | student img/step | step img/s | bound img/s | step / bound, median (IQR) | data img/s | data / step | "
             "peak mem MB | step vs plain | status |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for b in report.get("bench", []):
        r = b.get("result") or {}
        lines.append(f"| {b.get('label')} | {b.get('variant')} | {fmt(r.get('images_per_step'))} | {fmt(r.get('images_per_s'))} | "
                     f"{fmt(r.get('bound_images_per_s'))} | {ratio_cell(r, 'step_vs_bound')} | "
                     f"{fmt(r.get('data_images_per_s'))} | {fmt(b.get('data_vs_step'), '.1f')} | {fmt(r.get('peak_mem_mb'))} | "
                     f"{fmt(b.get('speedup_vs_plain'), '.2f')}{'x' if b.get('speedup_vs_plain') else ''} | "
                     f"{b.get('status')}{' (' + b['skipped'] + ')' if b.get('skipped') else ''} |")
    lines += ["", "## Targets", ""]
    for t in report.get("targets", []):
        lines.append(f"- {t['what']}: {t['value'] if t['value'] is not None else '–'} (target {t['target']}): **{t['verdict']}**")
    lines += ["", "## End-to-end `train_student.py` (CKD)", "",
              "| run | s / pseudo-epoch | train loop s / pseudo-epoch | train loop ms / step | outside the step (val, log, ckpt) | "
              "outside incl. set-up | total s | status |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for e in report.get("e2e", []):
        share = e.get("share_outside_train_step")
        share_all = e.get("share_outside_train_step_incl_setup")
        lines.append(f"| {e.get('label')} | {fmt(e.get('seconds_per_pseudo_epoch'), '.2f')} | "
                     f"{fmt(e.get('train_loop_s_per_pseudo_epoch'), '.2f')} | {fmt(e.get('train_loop_ms_per_step'), '.1f')} | "
                     f"{fmt(None if share is None else 100 * share, '.1f')}% | "
                     f"{fmt(None if share_all is None else 100 * share_all, '.1f')}% | "
                     f"{fmt((e.get('timing') or {}).get('total_s'), '.1f')} | {e.get('status')} |")
    lines += ["", "## Concurrent runs (`scripts/sweep.py`)", "", "| runs per GPU | runs | wall s | runs / hour | s per run | status |",
              "|---:|---:|---:|---:|---|---|"]
    for s in report.get("sweep", []):
        per = ", ".join(f"{x:.0f}" for x in s.get("run_seconds", []))
        lines.append(f"| {s.get('slots')} | {s.get('runs')} | {fmt(s.get('seconds'), '.0f')} | {fmt(s.get('runs_per_hour'), '.0f')} | "
                     f"{per or '–'} | {s.get('status')}{' (' + s['skipped'] + ')' if s.get('skipped') else ''} |")
    lines += ["", "## Deterministic SIGKILL + resume", ""]
    for d in report.get("determinism", []):
        lines.append(f"- {d['variant']} ({d.get('env') or 'default env'}): **{d.get('result')}**; killed after "
                     f"{fmt((d.get('kill') or {}).get('killed_after_s'), '.1f')} s, resumed from {d.get('resumed_from')}; "
                     f"metrics identical: {d.get('metrics_identical')}, best weights identical: {d.get('best_weights_identical')}"
                     + (f"; diff: `{json.dumps(d.get('diff'))}`" if d.get("diff") else "")
                     + (f"; {d['reason']}" if d.get("reason") else ""))
    if not report.get("determinism"):
        lines.append("- not run")
    lines += ["", "## Digits accuracy, plain vs `--amp --channels_last` (test %, mean ± std over seeds)", ""]
    digits = report.get("digits_accuracy") or {}
    if digits.get("summary"):
        lines += ["| method | plain | amp+channels_last |", "|---|---:|---:|"]
        for method, by_variant in digits["summary"].items():
            cells = [f"{v['mean']:.2f} ± {v['std']:.2f} (n={v['n']})" if (v := by_variant.get(name)) else "–"
                     for name in ("plain", "amp+channels_last")]
            lines.append(f"| {method} | {cells[0]} | {cells[1]} |")
    else:
        lines.append(f"- not run ({len(digits.get('runs', []))} runs recorded)")
    failed = [f"{s.get('step')}:{s.get('name')}" for s in report.get("steps", []) if s.get("status") in ("failed", "timeout")]
    lines += ["", f"failed or timed-out steps: {', '.join(failed) if failed else 'none'}", ""]
    return "\n".join(lines)


def targets(bench: list[dict[str, Any]], fast_variant: str) -> list[dict[str, Any]]:
    """The acceptance targets of issue #24 on the fast path (``fast_variant``)."""
    found = {(b.get("name"), b.get("variant")): b.get("result") for b in bench if b.get("result")}
    out = []
    for name in ("kd", "ckd2"):
        r = found.get((name, fast_variant))
        value = None if r is None or r.get("step_vs_bound") is None else round(r["step_vs_bound"], 3)
        verdict = ("not measured" if r is None else "measurement error (see the bench log)" if value is None
                   else "met" if value >= STEP_BOUND_TARGET else "MISSED")
        out.append({"what": f"{name} {fast_variant} step / bound", "value": value, "target": f">= {STEP_BOUND_TARGET}",
                    "verdict": verdict})
    for variant in ("plain", fast_variant):
        r = found.get(("ckd2", variant))
        value = None if r is None else round(r.get("data_vs_step", r["data_images_per_s"] / r["images_per_s"]), 1)
        out.append({"what": f"ckd2 {variant} data images/s / student images/s", "value": value, "target": f">= {DATA_STEP_TARGET:g}",
                    "verdict": "not measured" if value is None else ("met" if value >= DATA_STEP_TARGET else "MISSED")})
    return out


def cmd_report(args: argparse.Namespace) -> int:
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = read_steps(work)
    meta = json.loads((work / "meta.json").read_text()) if (work / "meta.json").is_file() else {}
    prepare = json.loads((work / "prepare.json").read_text()) if (work / "prepare.json").is_file() else {}
    prov = dict(prepare.get("provenance") or {})
    smi = work / "logs" / "nvidia_smi.txt"
    prov["nvidia_smi"] = smi.read_text(errors="replace").strip() if smi.is_file() else ""
    report: dict[str, Any] = {**meta, "provenance": prov,
                              "prepare": {k: v for k, v in prepare.items() if k != "provenance"},
                              "steps": [{"step": s.get("step"), "name": s.get("name"), **step_summary(s, work)} for s in steps]}
    sections = (("bench", bench_entry), ("e2e", e2e_entry), ("sweep", sweep_entry))
    for section, build in sections:
        entries = []
        for s in steps:
            if s.get("step") == section:
                try:
                    entries.append(build(s, work))
                except Exception as err:
                    entries.append({"name": s.get("name"), "status": "report_error", "error": f"{type(err).__name__}: {err}"})
        report[section] = entries
    report["determinism"] = []
    for variant in dict.fromkeys(s.get("variant") for s in steps if s.get("step") == "determinism"):
        try:
            entry = determinism_entry(steps, work, variant)
        except Exception as err:
            entry = {"variant": variant, "result": "fail", "reason": f"report error {type(err).__name__}: {err}"}
        if entry is not None:
            report["determinism"].append(entry)
    report["digits_accuracy"] = digits_entry(work)
    report["targets"] = targets(report["bench"], meta.get("fast_variant", "amp+channels_last"))
    for bench_e in report["bench"]:  # fast-path speed-up over the plain row of the same method
        plain = next((b for b in report["bench"] if b.get("name") == bench_e.get("name") and b.get("variant") == "plain"
                      and b.get("result")), None)
        if plain is not None and bench_e.get("result") and bench_e is not plain:
            bench_e["speedup_vs_plain"] = bench_e["result"]["images_per_s"] / plain["result"]["images_per_s"]
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print((out / "gpu_check.md").read_text(), flush=True)
    return 0


# ------------------------------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="gpu_report.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="provenance, CIFAR-format data, random-init teacher")
    prep.add_argument("--work", required=True)
    prep.add_argument("--device", default="cuda")
    prep.add_argument("--model_t", default="resnet110")
    prep.add_argument("--teacher", required=True, help="teacher checkpoint path to write")
    prep.add_argument("--n_train", type=int, default=5000)
    prep.add_argument("--n_test", type=int, default=10000)
    timed = sub.add_parser("timed-run", help="train_student.py with its parts timed (flags after --)")
    timed.add_argument("--timing", required=True)
    acc = sub.add_parser("digits-accuracy", help="digits students plain vs --amp --channels_last")
    acc.add_argument("--work", required=True)
    acc.add_argument("--device", default="cuda")
    acc.add_argument("--result", required=True)
    acc.add_argument("--seeds", type=int, default=3)
    acc.add_argument("--teacher_epochs", type=int, default=15)
    acc.add_argument("--student_epochs", type=int, default=40)
    acc.add_argument("--methods", default=",".join(DIGITS_METHODS), help="comma-separated subset of kd, ckd, mixup")
    rep = sub.add_parser("report", help="assemble gpu_check.json and gpu_check.md")
    rep.add_argument("--work", required=True)
    rep.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return cmd_prepare(args)
    if args.command == "timed-run":
        return cmd_timed_run(args, rest)
    if args.command == "digits-accuracy":
        return cmd_digits_accuracy(args)
    return cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
