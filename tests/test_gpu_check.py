"""benchmarks/gpu_check.sh --dry-run: the plumbing of the CUDA measurement (issue #24), on the CPU with tiny sizes.

It runs one bench configuration, one timed end-to-end run, the deterministic SIGKILL + resume check and one
sweep run, and must leave gpu_check.json, gpu_check.md and the log archive in $OUT. About 30 s on 2 idle cores
(9 Python start-ups); no timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run_script(*args: str, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("gpu_check_out")
    work = tmp_path_factory.mktemp("gpu_check_work")
    proc = run_script("--dry-run", out=out, PYTHON=sys.executable, GPU_CHECK_WORK=str(work))
    return proc, out


def test_dry_run_writes_the_json_the_table_and_the_logs(dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md", "gpu_check_logs.tar.gz"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert {"mode", "device", "provenance", "steps", "bench", "e2e", "sweep", "determinism", "targets", "total_s"} <= set(report)
    assert report["mode"] == "dry-run" and report["device"] == "cpu"
    assert {"torch_version", "torch_cuda_version", "device_name", "git_commit"} <= set(report["provenance"])
    failed = [s for s in report["steps"] if s["status"] in ("failed", "timeout")]
    assert not failed, failed

    # every bench configuration of the issue is listed (plain and fast, CKD also compiled); the dry run measures one
    listed = {(b["name"], b["variant"]) for b in report["bench"]}
    for name in ("kd", "ckd2", "ckd3", "mixup", "dist", "crd", "fitnet"):
        assert {(name, "plain"), (name, "amp+channels_last")} <= listed
    assert ("ckd2", "compile") in listed
    measured = [b for b in report["bench"] if b["status"] == "ok"]
    assert [(b["name"], b["variant"]) for b in measured] == [("ckd2", "amp+channels_last")]
    result = measured[0]["result"]
    assert result["amp"] is True and result["channels_last"] is True and result["device"] == "cpu"
    assert measured[0]["data_vs_step"] > 0

    e2e = next(e for e in report["e2e"] if e["status"] == "ok")
    assert e2e["results"]["pseudo_epochs"] == 5
    assert e2e["seconds_per_pseudo_epoch"] > 0 and 0 <= e2e["share_outside_train_step"] < 1
    assert not e2e["timing"]["missing_methods"]

    sweep = next(s for s in report["sweep"] if s["status"] == "ok")
    assert sweep["slots"] == 1 and sweep["ran"] == 1 and sweep["runs_per_hour"] > 0

    (det,) = report["determinism"]
    assert det["kill"]["killed"] is True and det["kill"]["finished_before_kill"] is False
    assert det["resumed_from"] is not None
    assert det["result"] == "pass", det  # exact resume holds on the CPU

    table = (out / "gpu_check.md").read_text()
    for heading in ("## Bench", "## Targets", "## End-to-end", "## Concurrent runs", "## Deterministic SIGKILL + resume"):
        assert heading in table
    assert ("| method | variant | student img/step | step img/s | bound img/s | step / bound, median (IQR) | data img/s "
            "| data / step |") in table
    assert "| CKD, P+N = 2 | amp+channels_last |" in table
    with tarfile.open(out / "gpu_check_logs.tar.gz") as tar:
        names = tar.getnames()
    assert "steps.jsonl" in names and any(n.endswith("_bench_ckd2.log") for n in names)


def test_an_unknown_argument_is_one_error_line(tmp_path: Path) -> None:
    proc = run_script("--fast", out=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown argument '--fast'")


def test_help_lists_the_steps(tmp_path: Path) -> None:
    proc = run_script("--help", out=tmp_path)
    assert proc.returncode == 0
    assert "--dry-run" in proc.stdout and "SIGKILL" in proc.stdout
