"""``--dataset stanfordcars`` end to end on a tiny Cars folder in the real layout: a teacher trained at 56x56 lands
where students look for it, students (CKD, KD) query it once per training image and view, and bad inputs stop with
one line and exit code 2 before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_student
import train_teacher
from helper.config import parse_student_args, parse_teacher_args
from helper.options import teacher_checkpoint_path, teacher_from_path
from tests.cars_fixture import make_fake_cars
from tests.conftest import ROOT

N_TRAIN, N_TEST = 30, 8  # images of the tiny Cars folder, over four classes
SUBSET, BATCH = 20, 8  # 16 training, 4 validation images
N_TRAIN_SPLIT = 16


@pytest.fixture(scope="module")
def cars_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding ``stanford_cars/`` (torchvision's layout), already decoded once into its tensor cache."""
    root = tmp_path_factory.mktemp("cars")
    make_fake_cars(root, nested=True, n_train=N_TRAIN, n_test=N_TEST)
    return root


@pytest.fixture(scope="module")
def cars_teacher(cars_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """save_dir of a resnet8 Cars teacher trained for one epoch by train_teacher.py (in this process)."""
    save_dir = tmp_path_factory.mktemp("cars_save")
    train_teacher.main(["--dataset", "stanfordcars", "--data_folder", str(cars_data), "--model", "resnet8", "--epochs", "1",
                        "--batch_size", "16", "--device", "cpu", "--save_dir", str(save_dir)])
    return save_dir


def run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def student_argv(cars_data: Path, save_dir: Path, *extra: str) -> list[str]:
    """A tiny Cars student; no --path_t: the teacher is found where train_teacher.py wrote it."""
    return ["--dataset", "stanfordcars", "--data_folder", str(cars_data), "--model_s", "resnet8", "--model_t", "resnet8",
            "--subset_size", str(SUBSET), "--batch_size", str(BATCH), "--epochs", "1", "--device", "cpu",
            "--save_dir", str(save_dir), *extra]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *keywords: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in keywords:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_cars_teacher_and_student_paths_and_defaults(tmp_path: Path) -> None:
    path = teacher_checkpoint_path(tmp_path, "stanfordcars", "resnet110")
    assert path == tmp_path / "models" / "resnet110_stanfordcars_vanilla" / "ckpt_epoch_240.pth"
    trial = teacher_checkpoint_path(tmp_path, "stanfordcars", "wrn_40_2", trial=3)
    assert trial.parent.name == "wrn_40_2_stanfordcars_vanilla_trial3"
    assert teacher_from_path(str(path)) == "resnet110" and teacher_from_path(str(trial)) == "wrn_40_2"
    for student, teacher in (("resnet32", "resnet110"), ("wrn_16_2", "wrn_40_2"), ("vgg8", "vgg13")):
        opt = parse_student_args(["--dataset", "stanfordcars", "--model_s", student, "--save_dir", str(tmp_path)])
        assert opt.model_t == teacher
        assert Path(opt.teacher_path) == teacher_checkpoint_path(tmp_path, "stanfordcars", teacher)
    trial.parent.mkdir(parents=True)
    trial.write_bytes(b"")  # --path_t must name an existing file; the architecture comes from its folder
    opt = parse_student_args(["--dataset", "stanfordcars", "--path_t", str(trial)])
    assert opt.model_t == "wrn_40_2"
    assert parse_teacher_args(["--dataset", "stanfordcars"]).epochs == 240  # the published recipe, unchanged


def test_cars_teacher_trains_at_the_crop_size(cars_teacher: Path) -> None:
    path = teacher_checkpoint_path(cars_teacher, "stanfordcars", "resnet8")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["dataset"] == "stanfordcars" and ckpt["epoch"] == 1
    assert ckpt["model"]["fc.weight"].shape == (196, 64)
    assert json.loads((path.parent / "config.json").read_text())["dataset"] == "stanfordcars"


@pytest.mark.parametrize("method,views", [
    (["--relational", "ckd"], 1),
    (["--relational", "ckd"], 2),
    (["--relational=None", "--w_kd", "1"], 1),
    (["--relational=None", "--w_kd", "1"], 2),
], ids=["ckd", "ckd-views2", "kd", "kd-views2"])
def test_cars_student_counts_teacher_calls(cars_data: Path, cars_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           method: list[str], views: int) -> None:
    save_dir = tmp_path / "save"
    shutil.copytree(cars_teacher, save_dir)
    train_student.main(student_argv(cars_data, save_dir, *method, "--teacher_views", str(views)))
    out = capsys.readouterr().out.strip().splitlines()
    results = json.loads(Path(out[-1].removeprefix("results: ")).read_text())
    assert results["n_train"] == N_TRAIN_SPLIT and results["n_val"] == SUBSET - N_TRAIN_SPLIT and results["n_test"] == N_TEST
    assert results["teacher_calls"] == N_TRAIN_SPLIT * views
    assert results["teacher_eval_calls"] == N_TEST
    assert results["teacher_sha256"] and results["pseudo_epochs"] == 1
    teacher = torch.load(teacher_checkpoint_path(save_dir, "stanfordcars", "resnet8"), map_location="cpu", weights_only=True)
    assert results["teacher_acc"] == pytest.approx(teacher["accuracy"])  # the same 56x56 centre-crop evaluation


def test_missing_cars_teacher_names_the_command_that_trains_it(cars_data: Path, tmp_path: Path) -> None:
    save_dir = tmp_path / "save"
    proc = run_cli(["train_student.py", *student_argv(cars_data, save_dir, "--relational", "ckd")])
    expected = teacher_checkpoint_path(save_dir, "stanfordcars", "resnet8")
    assert_one_line_error(proc, f"teacher checkpoint {expected} does not exist",
                          f"train_teacher.py --model resnet8 --dataset stanfordcars --data_folder {cars_data}")
    assert not (save_dir / "student").exists()


@pytest.mark.parametrize("script", ["train_teacher.py", "train_student.py"])
def test_missing_cars_files_stop_before_anything_is_written(tmp_path: Path, script: str) -> None:
    empty, save_dir = tmp_path / "empty", tmp_path / "save"
    empty.mkdir()
    if script == "train_teacher.py":
        args = ["train_teacher.py", "--dataset", "stanfordcars", "--data_folder", str(empty), "--model", "resnet8",
                "--epochs", "1", "--device", "cpu", "--save_dir", str(save_dir)]
    else:
        args = ["train_student.py", *student_argv(empty, save_dir, "--relational", "ckd")]
    proc = run_cli(args)
    assert_one_line_error(proc, "cars_meta.mat is missing", "Kaggle", "--data_folder")
    assert not save_dir.exists() and list(empty.iterdir()) == []


def test_corrupt_cars_image_stops_the_teacher_and_writes_nothing(tmp_path: Path) -> None:
    base = make_fake_cars(tmp_path / "data", nested=False, n_train=6, n_test=3)
    broken = base / "cars_train" / "00004.jpg"
    broken.write_bytes(broken.read_bytes()[:150])
    save_dir = tmp_path / "save"
    proc = run_cli(["train_teacher.py", "--dataset", "stanfordcars", "--data_folder", str(base), "--model", "resnet8",
                    "--epochs", "1", "--device", "cpu", "--save_dir", str(save_dir)])
    assert_one_line_error(proc, str(broken), "cannot be decoded")
    assert not save_dir.exists()
    assert not [p for p in base.iterdir() if p.name.startswith((".stanfordcars", "stanfordcars"))]  # no cache, no temp file
