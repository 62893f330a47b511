"""benchmarks/bench.py runs offline for several methods and ends with one JSON line (no timing assertions); its ratios
come from interleaved rounds, checked on a fake clock whose machine changes speed."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import pytest
import torch

from benchmarks import bench
from tests.conftest import ROOT

RATIOS = ("step_vs_bound", "data_vs_step", "cache_vs_forward", "calibrate_overhead")
REQUIRED_KEYS = {*RATIOS, *(f"{r}_{part}" for r in RATIOS for part in ("spread", "rounds", "error")),
                 "data_images_per_s", "images_per_s", "bound_images_per_s", "peak_mem_mb",
                 "model_s", "model_t", "relational", "distill", "batch_size", "device", "amp", "channels_last", "compile",
                 "threads", "torch_version"}
TINY = ["--model_s", "resnet8", "--model_t", "resnet8", "--subset_size", "200", "--batch_size", "16", "--steps", "2",
        "--warmup", "1", "--repeats", "1", "--cache_repeats", "1", "--device", "cpu", "--threads", "1"]
# name -> (flags, expected relational, student images per step: CKD feeds batch * pos_and_neg, the others one batch)
CASES = {
    "ckd": (["--relational", "ckd"], "ckd", 32),
    "kd": (["--relational=None", "--w_kd", "1"], None, 16),
    "crd": (["--relational", "crd", "--nce_k", "32"], "crd", 16),
    "hint": (["--relational=None", "--distill", "hint", "--hint_layer", "1"], None, 16),
    "abound": (["--relational=None", "--distill", "abound"], None, 16),  # pre-activation features, from the table
}


def run_bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "benchmarks/bench.py", *TINY, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("name", list(CASES))
def test_bench_ends_with_a_json_line(name: str) -> None:
    flags, relational, images_per_step = CASES[name]
    proc = run_bench(*flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert REQUIRED_KEYS <= set(result)
    assert (result["model_s"], result["model_t"], result["batch_size"], result["device"]) == ("resnet8", "resnet8", 16, "cpu")
    assert result["relational"] == relational and result["images_per_step"] == images_per_step
    assert (result["dataset"], result["input_size"]) == ("cifar100", 32)
    for key in ("data_images_per_s", "images_per_s", "bound_images_per_s", "peak_mem_mb"):
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0
    for key in RATIOS:  # the median of the rounds, or null with the reason (a busy machine may give either)
        rounds = result[f"{key}_rounds"]
        assert len(rounds) == result[f"{key}_spread"]["n"] == 1 and all(math.isfinite(x) and x > 0 for x in rounds)
        assert (result[key] is None) == (result[f"{key}_error"] is not None)
        assert result[key] is None or result[key] == statistics.median(rounds)
    assert any(line.startswith("step_vs_bound") for line in lines[:-1])  # the table comes before the JSON


def test_bench_rejects_a_bad_flag_in_one_line() -> None:
    proc = run_bench("--relational", "nope")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


def test_bench_on_stanford_cars_shapes() -> None:
    """--dataset stanfordcars: 196 classes, 64x64 synthetic images, the models see 56x56 crops."""
    proc = run_bench("--dataset", "stanfordcars", "--relational", "ckd", "--subset_size", "100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["dataset"], result["input_size"], result["images_per_step"]) == ("stanfordcars", 56, 32)
    assert math.isfinite(result["images_per_s"]) and result["images_per_s"] > 0


# ---------------------------------------------------------------- interleaved ratios on a fake clock
class LoadedMachine:
    """A fake clock and the work it times: a unit of work takes ``factor`` seconds while the machine is loaded (fake
    time in ``[busy_from, busy_until)``), one second otherwise; ``log`` records which function ran."""

    def __init__(self, busy_from: float, busy_until: float, factor: float) -> None:
        self.now, self.busy, self.factor, self.log = 0.0, (busy_from, busy_until), factor, []

    def clock(self) -> float:
        return self.now

    def work(self, name: str, units: float):
        def fn() -> None:
            self.log.append(name)
            slow = self.busy[0] <= self.now < self.busy[1]
            self.now += units * (self.factor if slow else 1.0)
        return fn


# per call: the step is the bound plus 0.1 of loss/data work, so the true step_vs_bound is 0.9 / 1.0
WORK = {"step": 1.0, "bound": 0.9, "data": 0.05, "calibrate": 4.0}
CALLS = {"step": 10, "bound": 10, "data": 10, "calibrate": 1}
ROUND = sum(WORK[n] * CALLS[n] for n in WORK)  # seconds of one round on the idle machine


def _times(machine: LoadedMachine, names: tuple[str, ...], rounds: int) -> dict[str, list[float]]:
    fns = {name: machine.work(name, WORK[name]) for name in names}
    return bench.interleaved_times(fns, {n: CALLS[n] for n in names}, rounds, torch.device("cpu"), machine.clock)


def test_interleaved_ratios_survive_a_load_change_between_phases() -> None:
    rounds = 9
    # the machine turns three times slower inside the 3rd round and idle again inside the 6th
    machine = LoadedMachine(busy_from=2.5 * ROUND, busy_until=2.5 * ROUND + 3 * 3 * ROUND, factor=3.0)
    times = _times(machine, ("step", "bound", "data", "calibrate"), rounds)
    assert machine.log[:31] == ["step"] * 10 + ["bound"] * 10 + ["data"] * 10 + ["calibrate"]  # one round, in order
    assert machine.log.count("calibrate") == rounds and len(machine.log) == 31 * rounds
    ratios = bench.step_ratios(times, steps_per_epoch=25)
    step_vs_bound = ratios["step_vs_bound"]
    assert step_vs_bound.error is None and step_vs_bound.value == pytest.approx(0.9, abs=1e-12)
    assert step_vs_bound.rounds.count(pytest.approx(0.9, abs=1e-12)) >= rounds - 2  # at most the two rounds where the load changed
    expected = statistics.quantiles(step_vs_bound.rounds, n=4, method="inclusive")
    assert (step_vs_bound.q1, step_vs_bound.q3) == pytest.approx((expected[0], expected[2]))
    assert step_vs_bound.spread()["n"] == rounds and step_vs_bound.low <= 0.9 <= step_vs_bound.high
    assert ratios["calibrate_overhead"].value == pytest.approx(4.0 / (25 * 1.0))
    assert ratios["data_vs_step"].value == pytest.approx(1.0 / 0.05)

    # the same machine timed phase by phase (all step blocks, then all bound blocks) gives a ratio the code cannot have
    machine = LoadedMachine(busy_from=rounds * CALLS["step"] * WORK["step"], busy_until=math.inf, factor=3.0)
    step = _times(machine, ("step",), rounds)["step"]
    bound = _times(machine, ("bound",), rounds)["bound"]
    phased = bench.ratio_of(bound, step, "step_vs_bound", bench.BOUNDED_RATIO_LIMIT)
    assert phased.value is None and phased.median == pytest.approx(2.7)


def test_a_ratio_above_its_limit_is_a_measurement_error(capsys: pytest.CaptureFixture[str]) -> None:
    ratio = bench.ratio_of([2.64, 2.7, 2.5], [1.0, 1.0, 1.0], "step_vs_bound", bench.BOUNDED_RATIO_LIMIT)
    assert ratio.value is None and "measurement error" in ratio.describe() and "2.640" in ratio.describe()
    fields = bench.ratio_fields({"step_vs_bound": ratio})
    assert fields["step_vs_bound"] is None and "above 1.05" in fields["step_vs_bound_error"]
    assert fields["step_vs_bound_spread"] == {"q1": pytest.approx(2.57), "q3": pytest.approx(2.67), "min": 2.5, "max": 2.7, "n": 3}
    ok = bench.ratio_of([1.04, 0.9], [1.0, 1.0], "step_vs_bound", bench.BOUNDED_RATIO_LIMIT)
    assert ok.error is None and ok.value == pytest.approx(0.97)
    assert bench.ratio_of([3.0], [1.0], "calibrate_overhead").value == 3.0  # no limit: an overhead may exceed 1
