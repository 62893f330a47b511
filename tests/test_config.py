"""The typed configuration and the Python entry point: the config mirrors the parsers, validates on construction with
the command line's sentences, is frozen, and ``run_teacher``/``run_student`` run exactly what the scripts run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train_student
from core.checkpoint import safe_load
from core.errors import UserError
from helper.config import StudentConfig, TeacherConfig, parse_student_args, parse_teacher_args
from helper.options import build_student_parser, build_teacher_parser, teacher_checkpoint_path
from helper.run import run_student, run_teacher
from tests.conftest import ROOT

PY = sys.executable


@pytest.mark.parametrize("config, parser", [(StudentConfig, build_student_parser), (TeacherConfig, build_teacher_parser)])
def test_config_fields_are_the_flags_with_the_parser_defaults(config: type, parser) -> None:
    flags = {a.dest: a.default for a in parser()._actions if a.option_strings and a.dest != "help"}
    fields = {f.name: f.default for f in dataclasses.fields(config) if f.init}
    assert fields == flags


def test_config_resolves_the_published_defaults_once() -> None:
    cfg = StudentConfig(model_s="vgg8", relational="ckd")
    assert (cfg.model_t, cfg.learning_rate) == ("vgg13", 0.05)
    assert cfg.path_t is None and cfg.teacher_path == str(teacher_checkpoint_path("./save", "cifar100", "vgg13"))
    assert cfg.method.relational is not None and cfg.method.relational.name == "ckd" and cfg.method.sampler == "ckd_tuples"
    assert cfg == parse_student_args(["--model_s", "vgg8", "--relational", "ckd"])
    assert TeacherConfig(dataset="digits").model == "resnet14" and parse_teacher_args([]).model == "resnet110"


def test_python_values_name_the_same_run_as_the_flags() -> None:
    """``w_kd=1`` from Python and ``--w_kd 1`` from the shell are the same run (same folder, same recorded flags)."""
    from helper.run_folder import student_run_dir

    assert StudentConfig(w_kd=1, relational="None").to_dict() == parse_student_args(["--w_kd", "1"]).to_dict()
    assert student_run_dir(StudentConfig(w_kd=1)) == student_run_dir(parse_student_args(["--w_kd", "1"]))


def test_config_is_frozen() -> None:
    cfg = parse_student_args([])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]
    assert dataclasses.replace(cfg, seed=3).seed == 3 and cfg.seed == 42


@pytest.mark.parametrize("field, value, flag_value", [
    ("patience", -1, "-1"), ("learning_rate", 0.0, "0"), ("train_val_frac", 1.5, "1.5"), ("pos_and_neg", 1, "1"),
    ("model_s", "resnet9000", "resnet9000"), ("w_cls", float("nan"), "nan"),
])
def test_a_bad_field_raises_the_sentence_of_the_flag(field: str, value: object, flag_value: str) -> None:
    with pytest.raises(UserError) as from_python:
        StudentConfig(**{field: value})
    proc = subprocess.run([PY, "train_student.py", f"--{field}={flag_value}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {from_python.value}"


def test_a_bad_type_or_choice_is_one_sentence() -> None:
    with pytest.raises(UserError, match=r"^--epochs must be a whole number, got 'ten'$"):
        StudentConfig(epochs="ten")  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"^--use_DA must be one of 0, 1, 2, got 5$"):
        StudentConfig(use_DA=5)
    with pytest.raises(UserError, match=r"^unknown --relational 'ckdd'"):
        StudentConfig(relational="ckdd")
    with pytest.raises(UserError, match=r"^--lr_decay_epochs must be comma-separated"):
        TeacherConfig(lr_decay_epochs="150;180")


def test_the_python_entry_point_runs_what_the_script_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save = str(tmp_path / "save")
    teacher = run_teacher(TeacherConfig(model="resnet8", dataset="digits", epochs=2, save_dir=save, device="cpu"))
    assert teacher == teacher_checkpoint_path(save, "digits", "resnet8") and teacher.is_file()
    assert safe_load(teacher)["epoch"] == 2
    argv = ["--dataset", "digits", "--model_s", "resnet8", "--model_t", "resnet8", "--subset_size", "120",
            "--batch_size", "32", "--epochs", "2", "--relational", "ckd", "--device", "cpu", "--save_dir", save]
    results = run_student(dataclasses.replace(parse_student_args(argv), seed=2))
    assert results["teacher_calls"] == results["n_train"] == 96 and results["config"]["seed"] == 2
    script_dir = tmp_path / "script"
    train_student.main([*argv, "--seed", "2", "--save_dir", str(script_dir), "--path_t", str(teacher)])
    from_script = json.loads(Path(capsys.readouterr().out.strip().splitlines()[-1].split("results: ", 1)[1]).read_text())
    for key in ("test_acc", "test_loss", "best_val_acc", "steps", "teacher_calls"):
        assert from_script[key] == results[key], key
    assert run_student(dataclasses.replace(parse_student_args(argv), seed=2)) == results  # finished: stored results


def test_sigterm_inside_a_long_teacher_epoch_stops_within_a_step_and_resumes_exactly(tmp_path: Path) -> None:
    """One epoch of ~90 steps: SIGTERM during it stops after the step in flight (exit 143, last.pth holds that step);
    the same command resumes mid-epoch and ends with the weights of an uninterrupted run."""
    args = ["train_teacher.py", "--model", "resnet8", "--dataset", "digits", "--epochs", "1", "--batch_size", "16",
            "--device", "cpu", "--deterministic"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole"
    subprocess.run([PY, *args, "--save_dir", str(whole)], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    split = tmp_path / "split"
    proc = subprocess.Popen([PY, *args, "--save_dir", str(split)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = split / "models_digits" / "resnet8_vanilla" / "config.json"  # written once the training can start
    deadline = time.time() + 120
    while not log.is_file():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    time.sleep(1.0)  # inside the epoch
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-2000:]
    last_path = log.parent / "last.pth"
    assert f"stopped: saved {last_path}" in out
    loop = safe_load(last_path)["loop"]
    assert loop["epochs_done"] == 0 and 0 < loop["step_in_epoch"] < 90 and not loop["finished"]  # mid-epoch, at a step
    resumed = subprocess.run([PY, *args, "--save_dir", str(split)], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0 and "resuming teacher training" in resumed.stdout, resumed.stderr[-2000:]
    final = [safe_load(root / "models_digits" / "resnet8_vanilla" / "ckpt_epoch_240.pth") for root in (whole, split)]
    assert final[0]["accuracy"] == final[1]["accuracy"]
    for key, value in final[0]["model"].items():
        assert torch.equal(value, final[1]["model"][key]), key


def test_a_last_checkpoint_of_an_earlier_version_is_refused_in_one_sentence(digits_save: Path) -> None:
    from helper.run_folder import student_run_dir

    argv = ["--dataset", "digits", "--model_s", "resnet8", "--model_t", "resnet8", "--subset_size", "80",
            "--batch_size", "32", "--epochs", "1", "--device", "cpu", "--save_dir", str(digits_save)]
    last = student_run_dir(parse_student_args(argv)) / "last.pth"
    last.parent.mkdir(parents=True)
    torch.save({"model": {}, "state": {"global_step": 3}}, last)  # the keys of an earlier version
    with pytest.raises(UserError, match=r"last.pth cannot be resumed: it lacks loop, best_val, .*delete it to train"):
        train_student.main(argv)
    assert last.is_file()  # nothing of the user's is deleted


def test_both_entry_points_refuse_the_wrong_config_type_and_take_natural_types(tmp_path: Path) -> None:
    """``run_student``/``run_teacher`` with another kind of configuration (the other one, a dict, a namespace, None):
    one sentence before anything runs; a ``pathlib.Path`` folder, numpy numbers and an int for a float are the values a
    Python caller naturally passes, and name the same run as the command line's text."""
    import argparse

    import numpy as np

    from helper.run_folder import student_run_dir

    student, teacher = StudentConfig(model_t="resnet8"), TeacherConfig()
    wrong = {run_student: [teacher, {"model_s": "resnet8"}, argparse.Namespace(model_s="resnet8"), None, "resnet8"],
             run_teacher: [student, {"model": "resnet8"}, argparse.Namespace(model="resnet8"), None, 3]}
    for entry, configs in wrong.items():
        expected = "StudentConfig" if entry is run_student else "TeacherConfig"
        for cfg in configs:
            with pytest.raises(UserError) as err:
                entry(cfg)  # type: ignore[arg-type]
            message = str(err.value)
            assert message.startswith(f"{entry.__name__} takes a {expected}") and type(cfg).__name__ in message
            assert "\n" not in message
    assert "goes to run_teacher" in str(pytest.raises(UserError, run_student, teacher).value)
    assert not (tmp_path / "save").exists()

    save = tmp_path / "save"
    natural = StudentConfig(save_dir=save, data_folder=tmp_path / "data", seed=np.int64(3), batch_size=np.int32(16),
                            learning_rate=np.float32(0.1), w_kd=1, kd_T=np.float64(4), subset_size=np.uint16(300),
                            keep_last=np.bool_(True), model_t="resnet8")
    text = parse_student_args(["--save_dir", str(save), "--data_folder", str(tmp_path / "data"), "--seed", "3",
                               "--batch_size", "16", "--learning_rate", "0.1", "--w_kd", "1", "--kd_T", "4",
                               "--subset_size", "300", "--keep_last", "--model_t", "resnet8"])
    assert natural.to_dict() == text.to_dict() and student_run_dir(natural) == student_run_dir(text)
    assert type(natural.seed) is int and type(natural.learning_rate) is float and type(natural.save_dir) is str
    assert TeacherConfig(save_dir=save, epochs=np.int64(3), lr_decay_epochs="2", momentum=np.float32(0.5),
                         deterministic=np.bool_(False)).to_dict() == \
        parse_teacher_args(["--save_dir", str(save), "--epochs", "3", "--lr_decay_epochs", "2", "--momentum", "0.5"]).to_dict()
    for field, value in (("seed", np.float64(2.5)), ("save_dir", 3), ("model_s", Path("resnet8")), ("amp", np.int64(1))):
        with pytest.raises(UserError, match=rf"^--{field} must be"):
            StudentConfig(model_t="resnet8", **{field: value})
    assert not save.exists()
