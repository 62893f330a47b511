"""A teacher folder holds one configuration: train_teacher.py resumes or reports "finished" only for the same flags,
stops with one line for other flags, never trains over a teacher whose flags are unknown, and --trial k gets its own
folder that students reach with --path_t."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helper.config import parse_student_args, parse_teacher_args
from helper.options import teacher_checkpoint_path, teacher_from_path
from tests.conftest import ROOT

PY = sys.executable
TEACHER_DIR = Path("models_digits") / "resnet8_vanilla"


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([PY, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def teacher_cmd(save_dir: Path, *extra: str) -> list[str]:
    return ["train_teacher.py", "--model", "resnet8", "--dataset", "digits", "--epochs", "2", "--save_freq", "1",
            "--device", "cpu", "--save_dir", str(save_dir), *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes (folders included as empty entries)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(folder.rglob("*"))}


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch resnet8 digits teacher; returns its save_dir (copied by each test that changes it)."""
    save_dir = tmp_path_factory.mktemp("teacher") / "save"
    proc = run(teacher_cmd(save_dir, "--keep_last"))  # the tests below read and rewrite last.pth
    assert proc.returncode == 0, proc.stderr[-2000:]
    return save_dir


@pytest.fixture()
def save_dir(trained: Path, tmp_path: Path) -> Path:
    target = tmp_path / "save"
    shutil.copytree(trained, target)
    return target


def test_finished_teacher_records_its_configuration(save_dir: Path) -> None:
    folder = save_dir / TEACHER_DIR
    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == "resnet8" and config["learning_rate"] == 0.05 and config["epochs"] == 2
    assert not {"save_dir", "device", "resume", "data_folder", "wdb_project", "save_freq"} & set(config)
    final = torch.load(folder / "ckpt_epoch_240.pth", weights_only=True)
    assert final["epoch"] == 2 and final["config"] == config and {"model", "accuracy", "optimizer"} <= set(final)
    assert torch.load(folder / "last.pth", weights_only=True)["config"] == config
    # --save_freq 1 wrote the periodic epoch-1 file, but never one named like the final file
    assert (folder / "ckpt_epoch_1.pth").is_file() and not (folder / "ckpt_epoch_2.pth").exists()


def test_rerun_of_a_finished_teacher_changes_nothing(save_dir: Path) -> None:
    before = snapshot(save_dir)
    proc = run(teacher_cmd(save_dir, "--device", "cpu", "--wdb_project", "elsewhere"))  # logging flags may differ
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already trained with these flags" in proc.stdout and "epoch 2" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == f"checkpoint: {save_dir / TEACHER_DIR / 'ckpt_epoch_240.pth'}"
    assert snapshot(save_dir) == before


def test_other_flags_in_the_same_folder_stop_with_one_line(save_dir: Path) -> None:
    before = snapshot(save_dir)
    line = one_error_line(run(teacher_cmd(save_dir, "--learning_rate", "0.1")))
    assert "--learning_rate 0.05 there, 0.1 now" in line and str(save_dir / TEACHER_DIR) in line
    assert "--trial 2" in line and "--save_dir" in line and "delete" in line
    assert snapshot(save_dir) == before  # checkpoint bytes (and everything else) unchanged
    line = one_error_line(run(teacher_cmd(save_dir, "--epochs", "3", "--seed", "1")))
    assert "--epochs 2 there, 3 now" in line and "--seed 42 there, 1 now" in line
    assert snapshot(save_dir) == before


def test_a_teacher_with_unrecorded_flags_is_never_trained_over(tmp_path: Path) -> None:
    """A downloaded (RepDistiller) teacher has no config.json: the same folder is refused, --trial 2 is offered."""
    from models import model_dict

    save = tmp_path / "save"
    path = teacher_checkpoint_path(save, "digits", "resnet8")
    path.parent.mkdir(parents=True)
    torch.save({"model": model_dict["resnet8"](num_classes=10).state_dict(), "epoch": 240, "accuracy": 90.0}, path)
    before = snapshot(save)
    line = one_error_line(run(teacher_cmd(save)))
    assert "flags are not recorded" in line and "--trial 2" in line
    assert snapshot(save) == before


def test_trial_gets_its_own_folder_that_students_reach_with_path_t(save_dir: Path, tmp_path: Path) -> None:
    proc = run(teacher_cmd(save_dir, "--trial", "2", "--learning_rate", "0.1", "--epochs", "1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    trial2 = save_dir / "models_digits" / "resnet8_vanilla_trial2" / "ckpt_epoch_240.pth"
    assert trial2.is_file() and proc.stdout.strip().endswith(f"checkpoint: {trial2}")
    assert teacher_checkpoint_path(save_dir, "digits", "resnet8", trial=2) == trial2
    assert teacher_from_path(str(trial2)) == "resnet8"
    opt = parse_student_args(["--dataset", "digits", "--model_s", "resnet8", "--path_t", str(trial2)])
    assert opt.model_t == "resnet8" and opt.path_t == str(trial2)
    # the first trial's folder is untouched and its next free trial is now 3
    line = one_error_line(run(teacher_cmd(save_dir, "--learning_rate", "0.2")))
    assert "--trial 3" in line


def test_interrupted_teacher_resumes_only_with_the_same_flags(save_dir: Path) -> None:
    """A teacher stopped after epoch 1 (no final file yet) resumes with the same flags and refuses other ones."""
    folder = save_dir / TEACHER_DIR
    (folder / "ckpt_epoch_240.pth").unlink()
    last = torch.load(folder / "last.pth", weights_only=True)
    torch.save({**last, "epoch": 1, "loop": {**last["loop"], "epochs_done": 1, "finished": False}}, folder / "last.pth")
    before = snapshot(save_dir)
    one_error_line(run(teacher_cmd(save_dir, "--weight_decay", "0.001")))
    assert snapshot(save_dir) == before
    proc = run(teacher_cmd(save_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming teacher training" in proc.stdout and "epoch    2" in proc.stdout and "epoch    1" not in proc.stdout
    assert torch.load(folder / "ckpt_epoch_240.pth", weights_only=True)["epoch"] == 2


def test_digits_defaults_use_the_readme_teacher() -> None:
    from helper.options import DEFAULT_DIGITS_TEACHER

    teacher = parse_teacher_args(["--dataset", "digits"])
    student = parse_student_args(["--dataset", "digits", "--model_s", "resnet8"])
    assert teacher.model == student.model_t == DEFAULT_DIGITS_TEACHER
    assert student.teacher_path == str(teacher_checkpoint_path("./save", "digits", DEFAULT_DIGITS_TEACHER))
    assert parse_teacher_args([]).model == "resnet110"
    assert parse_student_args(["--model_s", "resnet8"]).model_t == "resnet56"  # CIFAR-100 keeps the published pairs
    assert parse_student_args([]).subset_size is None  # the whole training set, resolved when the data is loaded


def test_finished_teacher_deletes_last_pth_unless_keep_last(tmp_path: Path) -> None:
    """By default a finished teacher keeps its final checkpoint and drops last.pth; a rerun still says it finished."""
    save_dir = tmp_path / "save"
    proc = run(teacher_cmd(save_dir, "--epochs", "1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = save_dir / TEACHER_DIR
    assert (folder / "ckpt_epoch_240.pth").is_file() and not (folder / "last.pth").exists()
    before = snapshot(save_dir)
    proc = run(teacher_cmd(save_dir, "--epochs", "1"))
    assert proc.returncode == 0 and "already trained with these flags" in proc.stdout
    assert snapshot(save_dir) == before
