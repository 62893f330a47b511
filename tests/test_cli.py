"""The command line as researchers type it: subprocess runs, exact resume, W&B offline, TensorBoard, teachers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helper.wandb_offline import read_offline_run
from tests.conftest import ROOT

PY = sys.executable


def run_cli(args: list[str], env_extra: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([PY, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def student_cmd(fake_cifar: Path, save_dir: Path, *extra: str) -> list[str]:
    teacher = save_dir / "models" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    return ["train_student.py", "--model_s", "resnet8", "--model_t", "resnet8", "--path_t", str(teacher), "--relational", "ckd",
            "--subset_size", "200", "--epochs", "2", "--dataset", "cifar100", "--data_folder", str(fake_cifar),
            "--device", "cpu", "--save_dir", str(save_dir), *extra]


def results_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("results: ")
    return json.loads(Path(last.removeprefix("results: ")).read_text())


def test_acceptance_command_reports_teacher_calls(fake_cifar, save_dir):
    results = results_of(run_cli(student_cmd(fake_cifar, save_dir)))
    assert results["teacher_calls"] == 160
    assert results["teacher_eval_calls"] == 100


def test_help_documents_every_flag():
    from models import model_dict

    proc = run_cli(["train_student.py", "--help"])
    assert proc.returncode == 0
    for flag in ("--model_s", "--relational", "--pos_and_neg", "--max_rel_samples", "--teacher_views", "--resume", "--save_dir",
                 "--wdb_project", "--_tags", "--amp", "--channels_last", "--compile"):
        assert flag in proc.stdout
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert ", ".join(model_dict) in text and len(model_dict) == 22
    for shown in ("(default: resnet32)", "(default: 0.8)", "(default: 64)", "(default: 42)", "(default: ./save)",
                  "(default: False)", "(default: the whole training set", "seed of the subset draw", "torch.compile the student"):
        assert shown in text, shown
    teacher = run_cli(["train_teacher.py", "--help"])
    assert teacher.returncode == 0
    text = " ".join(teacher.stdout.split())
    assert ", ".join(model_dict) in text and "(default: resnet110 for cifar100, resnet14 for digits)" in text
    assert "seed of the initialisation and data order (default: 42)" in text
    assert "torch.compile the model being trained" in text and "subset draw" not in text and "torch.compile the student" not in text
    assert "(default: 240)" in text and "{model}_vanilla_trial{k}" in text


def _final_metrics(results: dict) -> dict:
    keys = ("test_acc", "test_acc_top5", "test_loss", "best_val_acc", "best_val_loss", "best_epoch", "pseudo_epochs", "steps",
            "teacher_calls", "lr_decays")
    return {k: results[k] for k in keys}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended before writing a checkpoint"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_run_resumes_bit_identically(fake_cifar, save_dir, tmp_path, sig):
    # patience 1 with decays makes the schedule (best-weight reloads, lr changes) part of what must match
    extra = ["--epochs", "6", "--patience", "1", "--lr_decay_times", "2", "--batch_size", "16", "--deterministic"]
    env = {"CKD_CHECKPOINT_EVERY_S": "0"}
    reference_dir = tmp_path / "reference"
    shutil.copytree(save_dir, reference_dir)
    reference = results_of(run_cli(student_cmd(fake_cifar, reference_dir, *extra), env))

    cmd = student_cmd(fake_cifar, save_dir, *extra)
    proc = subprocess.Popen([PY, *cmd], cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dirs = save_dir / "student"
    deadline = time.time() + 120
    while not list(run_dirs.glob("*/last.pth")):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    time.sleep(0.3)  # somewhere inside a later pseudo-epoch
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM
        assert "resume with the same command" in out
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not list(run_dirs.glob("*/results.json"))
    resumed_proc = run_cli(cmd, env)
    assert "resuming that run" in resumed_proc.stdout
    assert "reusing the teacher cache" in resumed_proc.stdout  # no new teacher calls on resume
    resumed = results_of(resumed_proc)
    assert _final_metrics(resumed) == _final_metrics(reference)


def test_resume_flag_without_checkpoint_is_refused(fake_cifar, save_dir):
    proc = run_cli(student_cmd(fake_cifar, save_dir, "--resume"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--resume" in proc.stderr and "does not exist" in proc.stderr


def test_wandb_offline_without_key_logs_metrics(fake_cifar, save_dir, tmp_path):
    env = {"WANDB_MODE": "", "WANDB_API_KEY": "", "HOME": str(tmp_path), "WANDB_BASE_URL": "http://127.0.0.1:9"}
    env_clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    proc = subprocess.run([PY, *student_cmd(fake_cifar, save_dir)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**env_clean, **{k: v for k, v in env.items() if v}, "OMP_NUM_THREADS": "1"})
    results = results_of(proc)
    assert "no API key configured, logging offline" in proc.stdout
    run_dir = Path(proc.stdout.strip().splitlines()[-1].removeprefix("results: ")).parent
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline, "no W&B offline run folder"
    run = read_offline_run(offline[0])
    assert run["summary"]["test_acc"] == pytest.approx(results["test_acc"])
    assert [row["val_acc"] for row in run["history"]] and len(run["history"]) == 2
    assert run["summary"]["teacher_calls"] == 160 and "loss_cls" in run["summary"] and "lr" in run["summary"]
    assert run["config"]["relational"] == "ckd"


def test_wandb_key_without_network_falls_back_quickly(fake_cifar, save_dir):
    env = {"WANDB_MODE": "", "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}  # port 9: nothing listens
    env_clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    start = time.time()
    proc = subprocess.run([PY, *student_cmd(fake_cifar, save_dir, "--epochs", "1")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**env_clean, **{k: v for k, v in env.items() if v}, "OMP_NUM_THREADS": "1"})
    results_of(proc)
    assert "server not reachable" in proc.stdout
    assert time.time() - start < 120


def test_tensorboard_events_hold_val_acc(fake_cifar, save_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = run_cli(student_cmd(fake_cifar, save_dir))
    run_dir = Path(proc.stdout.strip().splitlines()[-1].removeprefix("results: ")).parent
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"val_acc", "val_loss", "train_loss", "lr", "teacher_calls", "loss_cls", "loss_rel"} <= set(tags)
    assert len(events.Scalars("val_acc")) == 2


def test_teacher_trained_on_digits_is_found_by_the_student(tmp_path):
    save_dir = tmp_path / "save"
    proc = run_cli(["train_teacher.py", "--model", "resnet8", "--dataset", "digits", "--epochs", "3", "--save_dir", str(save_dir),
                    "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt_path = save_dir / "models_digits" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    import torch

    ckpt = torch.load(ckpt_path, weights_only=True)
    assert {"model", "epoch", "accuracy", "optimizer"} <= set(ckpt) and ckpt["epoch"] == 3
    results = results_of(run_cli(["train_student.py", "--model_s", "resnet8", "--model_t", "resnet8", "--dataset", "digits",
                                  "--subset_size", "300", "--epochs", "1", "--save_dir", str(save_dir), "--device", "cpu",
                                  "--relational", "ckd"]))
    assert results["teacher_calls"] == 240
    assert results["teacher_acc"] == pytest.approx(ckpt["accuracy"])


def test_docs_flag_tables_match_the_parsers():
    """docs/flags.md's tables are markdown_flag_table() of each parser (regenerate them when a flag changes)."""
    from helper.options import build_student_parser, build_teacher_parser, markdown_flag_table

    page = (ROOT / "docs" / "flags.md").read_text(encoding="utf-8")
    for parser in (build_student_parser(), build_teacher_parser()):
        assert markdown_flag_table(parser) in page, f"docs/flags.md's flag table of {parser.prog} is out of date"
