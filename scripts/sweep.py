#!/usr/bin/env python3
"""Run a W&B sweep file on this machine, without a W&B server.

    python scripts/sweep.py ckd.yml --dry-run | wc -l        # 432 commands, nothing launched
    python scripts/sweep.py ckd.yml                           # one run after another, default device
    python scripts/sweep.py ckd.yml --gpus 0,1                # one run per GPU at a time
    python scripts/sweep.py ckd.yml --gpus 0,0,1,1            # two runs per GPU at a time
    python scripts/sweep.py ckd.yml -- --epochs 5 --wdb_project test   # flags appended to every run

The grid is expanded in the order a W&B agent receives it: parameters sorted by name, the
Cartesian product over their ``values`` with the last name varying fastest, duplicate values
dropped. ``method: random`` draws ``--count`` runs (seeded by ``--seed``). Every run becomes
``PYTHON PROGRAM --name=value ...`` (W&B agent style; ``None`` written as ``None``).

Flags after ``--`` are appended to every run (after the sweep's, so they win). Before anything
is launched every run is checked with train_student.py's own parser, so a
misspelt flag or a value outside a flag's choices stops the sweep with one sentence (exit 2).
A run whose ``results.json`` already exists in its run folder is skipped (``--dry-run`` marks
it ``# finished``), so an interrupted sweep restarts where it stopped. A failing run does not stop the sweep; the exit code is 1
when any run failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import queue
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError, run_main
from helper.config import student_config_from
from helper.options import build_student_parser, flag_value_message
from helper.run_folder import student_run_dir

ROOT = Path(__file__).resolve().parents[1]

SUPPORTED_METHODS = ("grid", "random")
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")
RANDOM_DISTRIBUTIONS = (
    "constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values",
    "q_log_uniform", "q_log_uniform_values", "inv_log_uniform", "inv_log_uniform_values", "normal", "q_normal",
    "log_normal", "q_log_normal", "beta", "q_beta",
)
# flags that sweep.py sets itself from its own options. --gpus does not add --device: each child sees one GPU
# through CUDA_VISIBLE_DEVICES and the default --device auto picks it, so a run's folder (and its
# results.json, which restarts look for) is the same whether a local sweep or a W&B agent started it.
OWN_FLAGS = ("save_dir",)


@dataclass
class Run:
    """One expanded run of the sweep."""

    index: int  # 1-based position in the sweep
    config: dict[str, Any]  # parameter name -> value, names sorted
    args: list[str]  # --name=value, as an agent passes them, then the extra flags given after --
    run_dir: Path  # where train_student.py writes results.json

    @property
    def finished(self) -> bool:
        return (self.run_dir / "results.json").is_file()


# ---------------------------------------------------------------- sweep file


def load_sweep(path: Path) -> dict[str, Any]:
    """Read a sweep file and check its overall shape (raises UserError)."""
    import yaml

    if path.is_dir():
        raise UserError(f"sweep file {path} is a directory, not a file; pass one of the *.yml files at the repository root")
    if not path.is_file():
        raise UserError(f"sweep file {path} does not exist; pass one of the *.yml files at the repository root")
    try:
        sweep = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8 YAML") from err
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror or err}); pass a readable sweep file") from err
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path} is not valid YAML ({first}); fix the file") from err
    if not isinstance(sweep, dict):
        raise UserError(f"{path} is not a W&B sweep configuration (expected a mapping with 'method' and 'parameters')")
    method = sweep.get("method")
    if method not in SUPPORTED_METHODS:
        raise UserError(f"{path} has method '{method}', but local sweeps support only grid and random; "
                        "use `wandb sweep` and `wandb agent` for other methods")
    parameters = sweep.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise UserError(f"{path} has no 'parameters' mapping; list the flags of train_student.py to sweep under 'parameters'")
    return sweep


def _distribution(name: str, spec: Any, source: str) -> str:
    """The distribution of one parameter, inferred the way W&B does when not given."""
    if not isinstance(spec, dict):
        raise UserError(f"{source}: parameter '{name}' must be a mapping such as {{value: X}} or {{values: [X, Y]}}")
    if "parameters" in spec:
        raise UserError(f"{source}: parameter '{name}' is nested, which train_student.py flags never are; give it value or values")
    if "distribution" in spec:
        dist = spec["distribution"]
    elif "value" in spec:
        dist = "constant"
    elif "values" in spec:
        dist = "categorical"
    elif "min" in spec and "max" in spec:
        both_int = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        dist = "int_uniform" if both_int else "uniform"
    else:
        raise UserError(f"{source}: parameter '{name}' has neither value, values nor min/max; give it one of them")
    if dist not in RANDOM_DISTRIBUTIONS:
        raise UserError(f"{source}: parameter '{name}' has unknown distribution '{dist}'; use one of {', '.join(RANDOM_DISTRIBUTIONS)}")
    if dist == "constant" and "value" not in spec:
        raise UserError(f"{source}: parameter '{name}' is constant but has no 'value'; add one")
    if dist == "categorical" and (not isinstance(spec.get("values"), list) or not spec["values"]):
        raise UserError(f"{source}: parameter '{name}' needs a non-empty list under 'values'")
    needs = {"int_uniform": ("min", "max"), "uniform": ("min", "max"), "q_uniform": ("min", "max"),
             "log_uniform": ("min", "max"), "log_uniform_values": ("min", "max"), "q_log_uniform": ("min", "max"),
             "q_log_uniform_values": ("min", "max"), "inv_log_uniform": ("min", "max"),
             "inv_log_uniform_values": ("min", "max")}.get(dist, ())
    for key in needs:
        if not isinstance(spec.get(key), (int, float)) or isinstance(spec.get(key), bool):
            raise UserError(f"{source}: parameter '{name}' ({dist}) needs a numeric '{key}'")
    if needs and not spec["min"] < spec["max"]:
        raise UserError(f"{source}: parameter '{name}' has min {spec['min']} not below max {spec['max']}; swap or fix them")
    if dist.endswith("_values") and spec["min"] <= 0:
        raise UserError(f"{source}: parameter '{name}' ({dist}) needs min > 0")
    return dist


def _value_key(value: Any) -> str:
    """Identity of a grid value as W&B compares them (2.0 == 2, True != 1, dict key order ignored)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True, default=repr)  # true vs 1 and "1" vs 1 stay distinct


def _unique(values: list[Any]) -> list[Any]:
    seen: set[str] = set()
    kept = []
    for value in values:
        key = _value_key(value)
        if key not in seen:
            seen.add(key)
            kept.append(value)
    return kept


def _clean_float(value: float) -> float:
    """Drop binary noise from quantised values (0.30000000000000004 -> 0.3)."""
    return float(f"{value:.12g}")


def _grid_values(name: str, spec: dict[str, Any], dist: str, source: str) -> list[Any]:
    if dist == "constant":
        return [spec["value"]]
    if dist == "categorical":
        if "probabilities" in spec:
            raise UserError(f"{source}: parameter '{name}' has probabilities, which grid search does not allow; remove them")
        return _unique(spec["values"])
    if dist == "int_uniform":
        if not all(isinstance(spec[k], int) for k in ("min", "max")):
            raise UserError(f"{source}: parameter '{name}' (int_uniform) needs integer min and max")
        return list(range(spec["min"], spec["max"] + 1))
    if dist == "q_uniform":
        q = spec.get("q", 1.0)
        count = math.ceil((spec["max"] - spec["min"]) / q)  # like numpy.arange: max excluded
        values = [spec["min"] + i * q for i in range(count)]
        return [int(v) if isinstance(q, int) and isinstance(spec["min"], int) else _clean_float(v) for v in values]
    raise UserError(f"{source}: grid search cannot enumerate parameter '{name}' ({dist}); give it 'values' "
                    "or use method: random with --count")


def expand_grid(parameters: dict[str, Any], source: str = "sweep") -> list[dict[str, Any]]:
    """Every run of a grid sweep, in W&B's order: names sorted, last name varying fastest."""
    names = sorted(parameters)
    axes = [_grid_values(n, parameters[n], _distribution(n, parameters[n], source), source) for n in names]
    runs: list[dict[str, Any]] = [{}]
    for name, values in zip(names, axes):
        runs = [{**run, name: value} for run in runs for value in values]
    return runs


def _quantise(value: float, q: float) -> float | int:
    result = round(value / q) * q
    return int(result) if isinstance(q, int) else _clean_float(result)


def _sample(spec: dict[str, Any], dist: str, rng: random.Random) -> Any:
    q = spec.get("q", 1)
    lo, hi = spec.get("min"), spec.get("max")
    mu, sigma = spec.get("mu", 0.0), spec.get("sigma", 1.0)
    if dist == "constant":
        return spec["value"]
    if dist == "categorical":
        weights = spec.get("probabilities")
        return rng.choices(spec["values"], weights=weights)[0]
    if dist == "int_uniform":
        return rng.randint(int(lo), int(hi))
    if dist in ("uniform", "q_uniform"):
        value = rng.uniform(lo, hi)
        return _quantise(value, q) if dist == "q_uniform" else value
    if dist in ("log_uniform", "q_log_uniform"):  # min and max are natural logs
        value = math.exp(rng.uniform(lo, hi))
        return _quantise(value, q) if dist.startswith("q_") else value
    if dist in ("log_uniform_values", "q_log_uniform_values"):  # min and max are the values themselves
        value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return _quantise(value, q) if dist.startswith("q_") else value
    if dist == "inv_log_uniform":
        return math.exp(-rng.uniform(lo, hi))
    if dist == "inv_log_uniform_values":
        return 1.0 / math.exp(rng.uniform(math.log(1.0 / hi), math.log(1.0 / lo)))
    if dist in ("normal", "q_normal"):
        value = rng.gauss(mu, sigma)
        return _quantise(value, q) if dist == "q_normal" else value
    if dist in ("log_normal", "q_log_normal"):
        value = math.exp(rng.gauss(mu, sigma))
        return _quantise(value, q) if dist == "q_log_normal" else value
    if dist in ("beta", "q_beta"):
        value = rng.betavariate(spec.get("a", 1.0), spec.get("b", 1.0))
        return _quantise(value, q) if dist == "q_beta" else value
    raise AssertionError(dist)


def sample_random(parameters: dict[str, Any], count: int, seed: int, source: str = "sweep") -> list[dict[str, Any]]:
    """``count`` runs drawn independently from each parameter's distribution (seeded)."""
    names = sorted(parameters)
    dists = {n: _distribution(n, parameters[n], source) for n in names}
    rng = random.Random(seed)
    return [{n: _sample(parameters[n], dists[n], rng) for n in names} for _ in range(count)]


def format_value(value: Any) -> str:
    """A value as a W&B agent writes it on the command line (Python's str: None, True, 0.05)."""
    return str(value)


def to_args(config: dict[str, Any]) -> list[str]:
    return [f"--{name}={format_value(value)}" for name, value in config.items()]


# ---------------------------------------------------------------- validation


def _raising_parser() -> argparse.ArgumentParser:
    parser = build_student_parser()

    def error(message: str) -> Any:
        raise UserError(flag_value_message(message) or message)

    parser.error = error  # type: ignore[method-assign]
    return parser


def check_flag_names(parameters: dict[str, Any], source: str) -> None:
    """Every parameter must be a train_student.py flag, spelt out in full."""
    known = {action.dest for action in build_student_parser()._actions if action.option_strings and action.dest != "help"}
    for name in parameters:
        if name not in known:
            raise UserError(f"{source}: parameter '{name}' is not a flag of train_student.py; rename or remove it "
                            "(`python train_student.py --help` lists the flags, spelt out in full)")


def build_runs(configs: list[dict[str, Any]], source: str, extra: list[str] | None = None) -> list[Run]:
    """Parse every run (its flags, then ``extra``) with train_student.py's parser (raises UserError before anything runs)."""
    parser = _raising_parser()
    runs = []
    for index, config in enumerate(configs, start=1):
        args = to_args(config) + list(extra or [])
        try:
            opt = student_config_from(parser.parse_args(args))  # every check of train_student.py, pairs included
        except UserError as err:
            raise UserError(f"{source}, run {index} of {len(configs)}: {err}; fix that value in the sweep file") from err
        runs.append(Run(index=index, config=config, args=args, run_dir=student_run_dir(opt)))
    return runs


# ---------------------------------------------------------------- launching


class Progress:
    """Thread-safe progress lines, counters and the children running now."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.ran = self.skipped = self.failed = self.stopped = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen[bytes]] = set()
        self.stopping = False  # set on Ctrl-C/SIGTERM: runs that exit now were stopped, not failed

    def say(self, run: Run, text: str) -> None:
        with self.lock:
            print(f"[{run.index}/{self.total}] {text}", flush=True)

    def done(self, run: Run, code: int, seconds: float, where: str = "", log: Path | None = None) -> None:
        with self.lock:
            prefix = f"[{run.index}/{self.total}] {where}"
            if code == 0:
                self.ran += 1
                print(f"{prefix}finished in {seconds:.1f} s: {run.run_dir}", flush=True)
            elif self.stopping:
                self.stopped += 1
                print(f"{prefix}stopped after {seconds:.1f} s; it resumes from its checkpoint when the sweep is run again",
                      flush=True)
            else:
                self.failed += 1
                self.failures.append(run.run_dir.name)
                hint = f", log: {log}" if log else ""
                print(f"{prefix}FAILED (exit code {code}) after {seconds:.1f} s{hint}", flush=True)

    def launch(self, cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> int:
        """Run one child to its end and return its exit code."""
        handle = open(log, "wb") if log is not None else None  # closed below
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT if handle else None)
            with self.lock:
                self.running.add(proc)
            try:
                return proc.wait()
            finally:
                with self.lock:
                    self.running.discard(proc)
        finally:
            if handle is not None:
                handle.close()

    def wait_for_running(self) -> None:
        """After Ctrl-C (which the terminal also sent to the runs): let them save their checkpoints."""
        self.stopping = True
        with self.lock:
            procs = list(self.running)
        if procs:
            print(f"interrupted: waiting for {len(procs)} run(s) to save a checkpoint (Ctrl-C again to stop at once)", flush=True)
        for proc in procs:
            proc.wait()


def _command(python: str, program: str, run: Run) -> list[str]:
    return [python, program, *run.args]


def run_sequential(runs: list[Run], python: str, program: str, progress: Progress) -> None:
    for run in runs:
        cmd = _command(python, program, run)
        progress.say(run, f"running: {shlex.join(cmd)}")
        start = time.monotonic()
        try:
            code = progress.launch(cmd)
        except KeyboardInterrupt:
            progress.wait_for_running()
            progress.done(run, 1, time.monotonic() - start)
            raise
        progress.done(run, code, time.monotonic() - start)


def run_parallel(runs: list[Run], python: str, program: str, gpus: list[str], progress: Progress) -> None:
    """One run per GPU at a time; each child sees only its GPU (CUDA_VISIBLE_DEVICES) and writes its
    output to {save_dir}/sweep_logs/{run name}.log."""
    free: queue.Queue[str] = queue.Queue()
    for gpu in gpus:
        free.put(gpu)

    def work(run: Run) -> None:
        if progress.stopping:
            return
        gpu = free.get()
        try:
            cmd = _command(python, program, run)
            log = run.run_dir.parent.parent / "sweep_logs" / f"{run.run_dir.name}.log"  # {save_dir}/sweep_logs
            log.parent.mkdir(parents=True, exist_ok=True)
            progress.say(run, f"gpu {gpu}: running: {shlex.join(cmd)} (log: {log})")
            start = time.monotonic()
            code = progress.launch(cmd, env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu}, log=log)
            progress.done(run, code, time.monotonic() - start, where=f"gpu {gpu}: ", log=log)
        finally:
            free.put(gpu)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(gpus))
    futures = [pool.submit(work, run) for run in runs]
    try:
        for future in concurrent.futures.as_completed(futures):
            future.result()
    except KeyboardInterrupt:
        progress.stopping = True
        pool.shutdown(wait=False, cancel_futures=True)
        progress.wait_for_running()
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)


def _terminate_on_sigterm(progress: Progress) -> Any:
    """SIGTERM (a scheduler stopping the sweep) reaches only this process: pass it on, then stop like Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        progress.stopping = True
        with progress.lock:
            procs = list(progress.running)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, handler)
    return None


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    from helper.options import POSITIVE_INT, SEED, OneLineParser, PathKind

    parser = OneLineParser(prog="sweep.py", usage="%(prog)s SWEEP_FILE [options] [-- EXTRA FLAGS FOR EVERY RUN]",
                           description="Run a W&B sweep file (grid or random) locally, without a W&B server. Flags after "
                                       "-- are appended to every run, e.g. -- --epochs 5 --wdb_project test.")
    parser.add_argument("sweep_file", type=Path, help="sweep configuration, e.g. ckd.yml")
    parser.add_argument("--dry-run", action="store_true", help="print one command per run and launch nothing")
    parser.add_argument("--count", type=POSITIVE_INT, default=None,
                        help="random: number of runs to draw (required); grid: launch at most this many runs")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the random search draws")
    parser.add_argument("--gpus", type=str, default=None,
                        help="comma-separated GPU ids, one slot each: 0,1 runs one run per GPU in parallel, 0,0,1,1 two per "
                             "GPU (each child sees only its GPU)")
    parser.add_argument("--save_dir", type=PathKind("output", "--save_dir"), default=None,
                        help="passed to every run as --save_dir (default: the program's)")
    parser.add_argument("--python", type=str, default=sys.executable, help="interpreter of the runs (default: this one)")
    parser.add_argument("--program", type=str, default=None,
                        help="training script (default: the sweep file's 'program', found at the repository root)")
    return parser


def _resolve_program(sweep: dict[str, Any], override: str | None, source: str) -> str:
    if override is not None:
        return override
    program = sweep.get("program")
    if not isinstance(program, str) or not program:
        raise UserError(f"{source} has no 'program'; add `program: train_student.py` or pass --program")
    candidate = Path(program)
    if not candidate.is_absolute() and not candidate.exists() and (ROOT / candidate).exists():
        return str(ROOT / candidate)
    return program


def _parse_gpus(text: str | None) -> list[str]:
    if text is None:
        return []
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise UserError(f"--gpus expects comma-separated GPU numbers such as 0,1 (repeat one, 0,0,1,1, to run several "
                        f"runs on it at once), got '{text}'")
    return gpus


def check_python(python: str) -> None:
    """``--python`` names an interpreter that can be started (raises UserError before anything is printed or run)."""
    found = shutil.which(python) if os.sep not in python else (python if os.path.isfile(python) else None)
    if found is None or not os.access(found, os.X_OK):
        raise UserError(f"--python {python} is not an executable interpreter; pass the path of a python, or leave "
                        "--python out to use the one running sweep.py")


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """(sweep.py's own arguments, the flags after ``--`` that go to every run)."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    own_argv, extra = split_extra(list(sys.argv[1:] if argv is None else argv))
    opt = build_parser().parse_args(own_argv)
    check_python(opt.python)
    if opt.save_dir is not None:
        opt.save_dir = str(opt.save_dir)
    source = opt.sweep_file.name
    sweep = load_sweep(opt.sweep_file)
    parameters: dict[str, Any] = dict(sweep["parameters"])
    gpus = _parse_gpus(opt.gpus)
    check_flag_names(parameters, source)
    if extra:
        try:
            _raising_parser().parse_args(extra)
        except UserError as err:
            raise UserError(f"the flags after --: {err}; fix them (`python train_student.py --help` lists the flags)") from err

    if sweep["method"] == "grid":
        configs = expand_grid(parameters, source)
    else:
        if opt.count is None:
            raise UserError(f"{source} is a random search, which never ends by itself; pass --count N")
        configs = sample_random(parameters, opt.count, opt.seed, source)
    own = {"save_dir": opt.save_dir}
    for config in configs:
        for name in OWN_FLAGS:
            if own[name] is not None:
                config[name] = own[name]
    runs = build_runs(configs, source, extra)
    program = _resolve_program(sweep, opt.program, source)

    if opt.dry_run:
        shown = runs if opt.count is None or sweep["method"] == "random" else runs[: opt.count]
        try:
            for run in shown:
                mark = f"  # finished: {run.run_dir / 'results.json'}" if run.finished else ""
                print(shlex.join(_command(opt.python, program, run)) + mark)
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: the reader has seen enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if not Path(program).is_file():
        raise UserError(f"program {program} does not exist; run from the repository root or pass --program")

    progress = Progress(len(runs))
    pending = []
    first_of: dict[Path, int] = {}
    for run in runs:
        if run.finished:
            progress.skipped += 1
            progress.say(run, f"skipped, results.json already exists: {run.run_dir}")
        elif run.run_dir in first_of:  # e.g. values 0.1 and 0.10: one configuration, one folder, one run
            progress.skipped += 1
            progress.say(run, f"skipped, the same configuration as run {first_of[run.run_dir]}")
        else:
            first_of[run.run_dir] = run.index
            pending.append(run)
    if opt.count is not None and sweep["method"] == "grid":
        pending = pending[: opt.count]
    print(f"sweep {source}: {len(runs)} runs, {progress.skipped} already finished, {len(pending)} to run"
          + (f" on GPUs {','.join(gpus)}" if gpus else ""), flush=True)
    interrupted = False
    previous_sigterm = _terminate_on_sigterm(progress)
    try:
        if gpus:
            run_parallel(pending, opt.python, program, gpus, progress)
        else:
            run_sequential(pending, opt.python, program, progress)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    not_started = len(pending) - progress.ran - progress.failed
    print(f"sweep {source}: ran {progress.ran}, skipped {progress.skipped}, failed {progress.failed}"
          + (f", stopped {progress.stopped}, not started {not_started - progress.stopped} (interrupted; run the same "
             "command again to continue)" if interrupted else ""), flush=True)
    for name in progress.failures:
        print(f"failed: {name}", flush=True)
    if interrupted:
        return 130
    return 1 if progress.failed else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
