"""benchmarks/bench.py runs offline for several methods and ends with one JSON line (no timing assertions)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

REQUIRED_KEYS = {"step_vs_bound", "cache_vs_forward", "calibrate_overhead", "data_images_per_s", "images_per_s", "bound_images_per_s",
                 "peak_mem_mb",
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
    for key in ("step_vs_bound", "cache_vs_forward", "calibrate_overhead", "data_images_per_s", "images_per_s", "bound_images_per_s",
                "peak_mem_mb"):
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0
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
