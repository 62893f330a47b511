"""End to end: every --relational x compatible --distill combination trains and writes results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import train_student
from helper import method_table
from helper.config import parse_student_args
from helper.run_folder import student_run_dir

RESULT_KEYS = {"test_acc", "test_acc_top5", "test_loss", "best_val_acc", "teacher_acc", "teacher_calls", "teacher_eval_calls",
               "n_train", "n_val", "pseudo_epochs", "steps", "wall_time_s", "config", "git_commit", "torch_version", "device",
               "teacher_sha256"}

COMBINATIONS = method_table.combinations()  # every accepted --relational x --distill pair of the method table


def base_args(fake_cifar: Path, save_dir: Path, *extra: str) -> list[str]:
    teacher = save_dir / "models" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    return ["--model_s", "resnet8", "--model_t", "resnet8", "--path_t", str(teacher), "--subset_size", "200",
            "--epochs", "2", "--dataset", "cifar100", "--data_folder", str(fake_cifar), "--device", "cpu",
            "--batch_size", "32", "--nce_k", "32", "--init_epochs", "1", "--save_dir", str(save_dir), *extra]


@pytest.mark.parametrize("relational,distill", COMBINATIONS, ids=[f"{r}-{d}" for r, d in COMBINATIONS])
def test_every_method_trains_end_to_end(relational, distill, fake_cifar, save_dir, capsys):
    argv = base_args(fake_cifar, save_dir, f"--relational={relational}", "--distill", distill, "--w_kd=1.0")
    train_student.main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    results_path = Path(out[-1].removeprefix("results: "))
    assert out[-1].startswith("results: ") and results_path.is_file()
    results = json.loads(results_path.read_text())
    assert RESULT_KEYS <= set(results)
    assert results["teacher_calls"] == 160 and results["n_train"] == 160 and results["n_val"] == 40
    assert results["teacher_eval_calls"] == 100
    assert results["pseudo_epochs"] == 2 and results["steps"] == 2 * 5  # ceil(160 / 32) steps per pseudo-epoch
    assert results["config"]["relational"] == relational and results["config"]["distill"] == distill
    assert 0.0 <= results["test_acc"] <= 100.0
    # test_acc_calibrated only where the row's loss leaves the offset free (ckd, ckd_inter): docs/calibration.md
    assert ("test_acc_calibrated" in results) == method_table.offset_free(results["config"])
    assert len(results["subset_fingerprint"]) == 64  # the subset's identity, for summarize's pairing
    run_dir = results_path.parent
    assert (run_dir / "best.pth").is_file() and not (run_dir / "last.pth").exists()  # last.pth: only with --keep_last
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


def test_run_folders_differ_for_any_identity_flag(fake_cifar, save_dir):
    a = parse_student_args(base_args(fake_cifar, save_dir))
    b = parse_student_args(base_args(fake_cifar, save_dir, "--kd_T", "3"))
    c = parse_student_args(base_args(fake_cifar, save_dir, "--w_kd", "1"))
    d = parse_student_args(base_args(fake_cifar, save_dir, "--w_kd", "1", "--calibrate", "train_mean"))  # queries the teacher
    dirs = {student_run_dir(a), student_run_dir(b), student_run_dir(c), student_run_dir(d)}
    assert len(dirs) == 4
    assert all(":" not in d.name for d in dirs)
    for logging_only in (("--_tags", "x"), ("--keep_cache",), ("--wdb_project", "p")):  # never a new run
        assert student_run_dir(parse_student_args(base_args(fake_cifar, save_dir, *logging_only))) == student_run_dir(a)


def test_finished_run_is_not_repeated(fake_cifar, save_dir, capsys):
    argv = base_args(fake_cifar, save_dir, "--relational", "ckd", "--epochs", "1")
    train_student.main(argv)
    first = capsys.readouterr().out.strip().splitlines()[-1]
    train_student.main(argv)
    second = capsys.readouterr().out
    assert "already finished" in second and second.strip().splitlines()[-1] == first


def test_cross_entropy_only_student_makes_no_teacher_call(fake_cifar, save_dir, capsys):
    train_student.main(base_args(fake_cifar, save_dir, "--relational=None", "--w_kd=0", "--epochs", "1"))
    results = json.loads(Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("results: ")).read_text())
    assert results["teacher_calls"] == 0  # nothing of the teacher is used, so nothing is asked of it
    assert results["teacher_eval_calls"] == 100  # the teacher's own test accuracy is still reported, counted apart


def test_lr_decay_times_three_trains_exactly_three_phases(fake_cifar, save_dir, capsys):
    train_student.main(base_args(fake_cifar, save_dir, "--relational", "ckd", "--epochs", "60", "--patience", "1",
                                 "--lr_decay_times", "3"))
    out = capsys.readouterr().out
    results = json.loads(Path(out.strip().splitlines()[-1].removeprefix("results: ")).read_text())
    assert results["lr_decays"] == 2 and results["pseudo_epochs"] < 60
    lrs = {float(line.split("| lr ")[1].split(" |")[0]) for line in out.splitlines() if line.startswith("epoch ")}
    assert sorted(lrs, reverse=True) == pytest.approx([0.05, 0.005, 0.0005])
    assert "phase 3 of 3" in out and "phase 4" not in out


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep_cache"])
def test_finished_white_box_run_deletes_its_teacher_cache_unless_kept(fake_cifar, save_dir, capsys, keep):
    """A finished VID run leaves no teacher_cache.pth (fp16 feature maps by default) unless --keep_cache."""
    extra = ["--keep_cache"] if keep else []
    train_student.main(base_args(fake_cifar, save_dir, "--distill", "vid", "--epochs", "1", *extra))
    results_path = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("results: "))
    results = json.loads(results_path.read_text())
    cache = results_path.parent / "teacher_cache.pth"
    assert cache.is_file() == keep
    assert results["cache_bytes"] > 0 and results["config"]["cache_dtype"] == "float16"
    if keep:
        import torch

        feats = torch.load(cache, weights_only=True)["pool"]["teacher_feats"]
        assert feats and all(v.dtype == torch.float16 for v in feats.values())
