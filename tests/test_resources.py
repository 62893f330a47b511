"""Runs that cannot fit are refused before the teacher is queried; a finished run keeps no last.pth by default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import train_student
from core.errors import UserError
from helper import resources
from helper.config import parse_student_args
from helper.options import teacher_checkpoint_path
from helper.resources import GIB, Estimate
from helper.run_folder import student_run_dir
from helper.student_trainer import estimate_student_run


def digits_args(save_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["--dataset", "digits", "--model_s", "resnet8", "--model_t", "resnet8", "--subset_size", "80", "--epochs", "1",
            "--batch_size", "32", "--device", "cpu", "--save_dir", str(out_dir),
            "--path_t", str(teacher_checkpoint_path(save_dir, "digits", "resnet8")), *extra]


@pytest.fixture()
def no_teacher(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails the test if the teacher file is read (the first step of querying it)."""
    calls: list[str] = []

    def load_teacher(*args: object, **kwargs: object) -> None:
        calls.append("load_teacher")
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr("helper.student_trainer.load_teacher", load_teacher)
    return calls


@pytest.mark.parametrize(("flags", "flag"), [
    (["--w_kd", "1", "--teacher_views", str(10**7)], "--teacher_views"),
    (["--relational", "crd", "--nce_k", str(10**9)], "--nce_k"),
    (["--distill", "correlation", "--feat_dim", str(10**9)], "--feat_dim"),
    (["--relational", "ckd", "--pos_and_neg", "60", "--max_rel_samples", str(10**9)], "--max_rel_samples"),
], ids=["teacher_views", "nce_k", "feat_dim", "tuple_pass"])
def test_a_run_that_cannot_fit_is_refused_before_the_teacher(flags: list[str], flag: str, digits_save: Path, tmp_path: Path,
                                                             no_teacher: list[str]) -> None:
    argv = digits_args(digits_save, tmp_path / "out", *flags)
    with pytest.raises(UserError) as err:
        train_student.main(argv)
    message = str(err.value)
    assert "this run needs about" in message and "TiB" in message and flag in message and "\n" not in message
    assert no_teacher == []
    assert not student_run_dir(parse_student_args(argv)).exists() and not (tmp_path / "out" / "student").exists()


def test_a_full_disk_is_refused_before_the_teacher(digits_save: Path, tmp_path: Path, no_teacher: list[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda path: type("usage", (), {"free": 1024 * 1024})())
    with pytest.raises(UserError, match=r"of disk under .* but only 1\.0 MiB is free; change"):
        train_student.main(digits_args(digits_save, tmp_path / "out", "--relational", "ckd"))
    assert no_teacher == [] and not (tmp_path / "out" / "student").exists()


# the published runs, on the CPU of a 24 GB machine and on a 24 GB GPU: none may be refused
NORMAL_RUNS = [
    (["--dataset", "digits", "--model_s", "resnet8", "--relational", "ckd", "--subset_size", "400"], 320, 80, 360, 10),
    (["--relational", "ckd", "--subset_size", "2000"], 1600, 400, 10000, 100),
    (["--relational", "ckd", "--subset_size", "6000", "--pos_and_neg", "3"], 4800, 1200, 10000, 100),
    ([], 40000, 10000, 10000, 100),
    (["--model_s", "resnet8x4", "--distill", "hint"], 40000, 10000, 10000, 100),
    (["--model_s", "resnet8x4", "--distill", "hint", "--cache_dtype", "float32"], 40000, 10000, 10000, 100),
    (["--model_s", "wrn_16_2", "--relational", "crd"], 40000, 10000, 10000, 100),
    (["--model_s", "ShuffleV1", "--relational", "crd"], 40000, 10000, 10000, 100),
    (["--model_s", "vgg8", "--relational", "ckd_inter", "--distill", "vid"], 40000, 10000, 10000, 100),
    (["--model_s", "resnet32", "--relational", "mlkd", "--teacher_views", "2"], 40000, 10000, 10000, 100),
]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize(("flags", "n_train", "n_val", "n_test", "classes"), NORMAL_RUNS,
                         ids=[" ".join(r[0]) or "defaults" for r in NORMAL_RUNS])
def test_the_published_runs_fit_24_gb(flags: list[str], n_train: int, n_val: int, n_test: int, classes: int,
                                      device: str) -> None:
    estimate = estimate_student_run(parse_student_args(flags), n_train, n_val, n_test, 32, (3, 32, 32), classes,
                                    torch.device(device))
    assert Estimate.total(estimate.device) + Estimate.total(estimate.host) < 20 * GIB
    assert Estimate.total(estimate.disk) < 20 * GIB


def test_the_estimate_leaves_the_random_streams_alone() -> None:
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    estimate_student_run(parse_student_args(["--relational", "ckd"]), 1600, 400, 10000, 32, (3, 32, 32), 100,
                         torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep_last"])
def test_a_finished_run_keeps_last_pth_only_with_keep_last(keep: bool, digits_save: Path, tmp_path: Path, capsys) -> None:
    argv = digits_args(digits_save, tmp_path / "out", "--relational", "ckd", *(["--keep_last"] if keep else []))
    train_student.main(argv)
    results_path = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("results: "))
    run_dir = results_path.parent
    assert (run_dir / "best.pth").is_file() and (run_dir / "last.pth").is_file() == keep
    train_student.main(argv)  # a rerun says it finished and reports the stored results
    out = capsys.readouterr().out
    assert "this configuration already finished" in out and (run_dir / "last.pth").is_file() == keep
    assert json.loads(results_path.read_text())["steps"] == 2  # ceil(64 / 32) steps of one pseudo-epoch


def test_a_teacher_that_cannot_fit_on_disk_is_refused_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import train_teacher

    monkeypatch.setattr(resources.shutil, "disk_usage", lambda path: type("usage", (), {"free": 1024})())
    with pytest.raises(UserError, match=r"of disk under .* but only 1\.0 KiB is free; change"):
        train_teacher.main(["--model", "resnet8", "--dataset", "digits", "--epochs", "1", "--device", "cpu",
                            "--save_dir", str(tmp_path / "save")])
    assert not (tmp_path / "save").exists()


def test_bench_checks_that_it_fits_before_building_its_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import bench

    def no_teacher(*args: object, **kwargs: object) -> None:
        raise AssertionError("the benchmark built its teacher")

    monkeypatch.setattr(bench, "calibrate_batchnorm", no_teacher)
    with pytest.raises(UserError, match=r"^this run needs about .* TiB .*--feat_dim embedding heads.*change --feat_dim"):
        bench.main(["--model_s", "resnet8", "--model_t", "resnet8", "--distill", "correlation", "--feat_dim", str(10**9),
                    "--subset_size", "100", "--batch_size", "8", "--device", "cpu", "--threads", "1"])
