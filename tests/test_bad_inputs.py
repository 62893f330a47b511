"""Every bad input of the "Bad inputs" table in docs/reliability.md, run as the real command: exit code 2, exactly
one stderr line ``error: ...`` naming the problem, no traceback, and nothing written (the teacher never called
where the error can be known before)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

PY = sys.executable
TEACHER_REL = Path("models") / "resnet8_vanilla" / "ckpt_epoch_240.pth"


def run(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python <args>`` from the repository root, W&B off, one thread."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([PY, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def student(fake_cifar: Path, save_dir: Path, *extra: str) -> list[str]:
    """A tiny, otherwise valid train_student.py command; later flags in ``extra`` override earlier ones."""
    return ["train_student.py", "--model_s", "resnet8", "--model_t", "resnet8", "--path_t", str(save_dir / TEACHER_REL),
            "--subset_size", "200", "--batch_size", "32", "--epochs", "1", "--data_folder", str(fake_cifar),
            "--device", "cpu", "--save_dir", str(save_dir), *extra]


def teacher(save_dir: Path, *extra: str) -> list[str]:
    return ["train_teacher.py", "--model", "resnet8", "--dataset", "digits", "--epochs", "1", "--device", "cpu",
            "--save_dir", str(save_dir), *extra]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *keywords: str) -> str:
    """Exit code 2, stderr exactly one ``error:`` line holding every keyword, no traceback anywhere."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for word in keywords:
        assert word.lower() in line.lower(), (word, line)
    return line


def student_files(save_dir: Path) -> list[Path]:
    """Every file and folder a student run wrote (an empty run folder counts too)."""
    return sorted((save_dir / "student").rglob("*")) + ([save_dir / "student"] if (save_dir / "student").exists() else [])


def assert_teacher_never_called(proc: subprocess.CompletedProcess[str], save_dir: Path) -> None:
    """No teacher cache, no teacher-call line: the error came before the first teacher call, and nothing was written
    (not even an empty save/student/<run>/ folder)."""
    assert "teacher calls" not in proc.stdout, proc.stdout
    assert student_files(save_dir) == [], student_files(save_dir)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize("flag", ["--model_s", "--model_t"])
def test_unknown_model(fake_cifar: Path, save_dir: Path, flag: str) -> None:
    proc = run(student(fake_cifar, save_dir, flag, "resnet9000"))
    assert_one_line_error(proc, "unknown architecture", "resnet9000", flag, "resnet32")
    assert_teacher_never_called(proc, save_dir)


@pytest.mark.parametrize("extra,keywords", [
    (["--relational", "ckd_inter", "--distill", "kd"], ["ckd_inter", "white-box", "--distill hint"]),
    (["--distill", "hint", "--relational", "crd"], ["--distill hint", "white-box", "crd"]),
    (["--relational", "foo"], ["--relational", "invalid choice", "foo", "--help"]),
], ids=["ckd_inter-kd", "hint-crd", "unknown-relational"])
def test_unknown_or_incompatible_method(fake_cifar: Path, save_dir: Path, extra: list[str], keywords: list[str]) -> None:
    proc = run(student(fake_cifar, save_dir, *extra))
    assert_one_line_error(proc, *keywords)
    assert_teacher_never_called(proc, save_dir)


def test_subset_larger_than_the_training_set(fake_cifar: Path, save_dir: Path) -> None:
    proc = run(student(fake_cifar, save_dir, "--subset_size", "400"))  # the fake training set holds 300 images
    assert_one_line_error(proc, "--subset_size 400", "larger than the 300-image training set", "300 or less")
    assert_teacher_never_called(proc, save_dir)


@pytest.mark.parametrize("size,keywords", [
    ("20", ["--subset_size 20", "fewer than one batch", "--batch_size 32"]),
    ("1", ["--subset_size", "at least 2"]),
], ids=["below-one-batch", "below-two"])
def test_subset_too_small(fake_cifar: Path, save_dir: Path, size: str, keywords: list[str]) -> None:
    proc = run(student(fake_cifar, save_dir, "--subset_size", size))
    assert_one_line_error(proc, *keywords)
    assert_teacher_never_called(proc, save_dir)


def test_too_few_training_images_for_a_ckd_tuple(fake_cifar: Path, save_dir: Path) -> None:
    """Known once the data is loaded: stopped before the teacher is read or called."""
    proc = run(student(fake_cifar, save_dir, "--relational", "ckd", "--pos_and_neg", "40", "--subset_size", "40"))
    assert_one_line_error(proc, "tuples of 40 distinct training images", "only 32", "--subset_size", "--pos_and_neg")
    assert_teacher_never_called(proc, save_dir)


@pytest.mark.parametrize("frac", ["1.5", "0", "1", "-0.2"])
def test_train_val_frac_out_of_range(fake_cifar: Path, save_dir: Path, frac: str) -> None:
    proc = run(student(fake_cifar, save_dir, "--train_val_frac", frac))
    assert_one_line_error(proc, "--train_val_frac", "between 0 and 1")
    assert_teacher_never_called(proc, save_dir)


@pytest.mark.parametrize("extra,keywords", [
    (["--distill", "hint", "--hint_layer", "9"], ["--hint_layer 9", "outside the feature list", "0 to 4"]),
    (["--distill", "hint", "--hint_layer", "-1"], ["--hint_layer -1", "outside the feature list"]),
    (["--relational", "ckd", "--pos_and_neg", "1"], ["--pos_and_neg", "at least 2", "got 1"]),
    (["--relational", "crd", "--nce_k", "0"], ["--nce_k", "at least 1", "got 0"]),
], ids=["hint_layer-9", "hint_layer-negative", "pos_and_neg-1", "nce_k-0"])
def test_method_flags_out_of_range(fake_cifar: Path, save_dir: Path, extra: list[str], keywords: list[str]) -> None:
    proc = run(student(fake_cifar, save_dir, *extra))
    assert_one_line_error(proc, *keywords)
    assert_teacher_never_called(proc, save_dir)


@pytest.mark.parametrize("extra,keywords", [
    (["--momentum", "-1"], ["--momentum", "0 or more", "-1"]),
    (["--weight_decay", "-1"], ["--weight_decay", "0 or more", "-1"]),
    (["--epochs", "0"], ["--epochs", "at least 1", "got 0"]),
    (["--learning_rate", "-1"], ["--learning_rate", "positive", "-1"]),
    (["--lr_decay_rate", "0"], ["--lr_decay_rate", "positive", "got 0"]),
    (["--batch_size", "0"], ["--batch_size", "at least 1", "got 0"]),
    (["--trial", "0"], ["--trial", "at least 1", "got 0"]),
], ids=["momentum", "weight_decay", "epochs-0", "learning_rate", "lr_decay_rate", "batch_size", "trial"])
def test_optimiser_and_schedule_flags_out_of_range(fake_cifar: Path, save_dir: Path, extra: list[str],
                                                   keywords: list[str]) -> None:
    proc = run(student(fake_cifar, save_dir, *extra))
    assert_one_line_error(proc, *keywords)
    assert_teacher_never_called(proc, save_dir)


@pytest.mark.parametrize("script,flag", [
    ("train_student.py", ["--lr", "0.1"]),
    ("train_student.py", ["--sub", "300"]),
    ("train_student.py", ["--relation", "ckd"]),
    ("train_teacher.py", ["--lr", "0.1"]),
    ("train_teacher.py", ["--save", "5"]),
], ids=["student-lr", "student-sub", "student-relation", "teacher-lr", "teacher-save"])
def test_abbreviated_flags_are_refused(fake_cifar: Path, save_dir: Path, tmp_path: Path, script: str, flag: list[str]) -> None:
    """argparse would otherwise read --lr as --lr_decay_rate and --sub as --subset_size without a word."""
    base = student(fake_cifar, save_dir) if script == "train_student.py" else teacher(tmp_path / "tsave")
    proc = run([*base, *flag])
    assert_one_line_error(proc, "unrecognized arguments", flag[0], "--help")
    assert_teacher_never_called(proc, save_dir)
    assert not (tmp_path / "tsave").exists()


def test_unavailable_cuda_index_is_named_as_given(fake_cifar: Path, save_dir: Path, tmp_path: Path) -> None:
    proc = run(student(fake_cifar, save_dir, "--device", "cuda:3"), {"CUDA_VISIBLE_DEVICES": ""})
    assert_one_line_error(proc, "--device cuda:3 was requested", "--device cpu")
    assert_teacher_never_called(proc, save_dir)
    proc = run(teacher(tmp_path / "tsave", "--device", "cuda:3"), {"CUDA_VISIBLE_DEVICES": ""})
    assert_one_line_error(proc, "--device cuda:3 was requested")
    assert not (tmp_path / "tsave").exists()
    proc = run(student(fake_cifar, save_dir, "--device", "cuda:x"))
    assert_one_line_error(proc, "unknown device 'cuda:x'", "cuda:N")


# ---------------------------------------------------------------- data


def test_missing_data_offline(save_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "no_cifar"
    url = f"http://127.0.0.1:{_closed_port()}/cifar-100-python.tar.gz"  # nothing listens there
    proc = run(student(data, save_dir), {"CIFAR100_URL": url, "CIFAR100_TIMEOUT": "5"})
    assert_one_line_error(proc, f"CIFAR-100 is not in {data / 'cifar-100-python'}", "could not be downloaded", url,
                          "--data_folder")
    assert_teacher_never_called(proc, save_dir)
    assert not data.exists()  # no partial download, no extraction folder, not even the empty data folder


def test_corrupt_cifar_pickle(fake_cifar: Path, save_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(fake_cifar, data)
    train = data / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:5000])
    proc = run(student(data, save_dir))
    assert_one_line_error(proc, str(train), "truncated or not a CIFAR-100 pickle", "download CIFAR-100 again")
    assert_teacher_never_called(proc, save_dir)
    assert train.stat().st_size == 5000  # the user's file is reported, never deleted or rewritten


# ---------------------------------------------------------------- teacher checkpoint


def test_missing_teacher_checkpoint(fake_cifar: Path, save_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    proc = run(student(fake_cifar, save_dir, "--path_t", str(missing)))
    assert_one_line_error(proc, f"teacher checkpoint {missing} does not exist", "train_teacher.py --model resnet8")
    assert_teacher_never_called(proc, save_dir)


def test_missing_digits_teacher_suggests_training_it(save_dir: Path) -> None:
    proc = run(["train_student.py", "--dataset", "digits", "--model_s", "resnet8", "--subset_size", "200", "--batch_size", "32",
                "--epochs", "1", "--device", "cpu", "--save_dir", str(save_dir)])
    line = assert_one_line_error(proc, f"teacher checkpoint {save_dir / 'models_digits' / 'resnet14_vanilla'}", "does not exist",
                                 "train_teacher.py --model resnet14 --dataset digits")
    assert "fetch_pretrained_teachers" not in line  # that script only fetches CIFAR-100 teachers
    assert_teacher_never_called(proc, save_dir)


def test_plain_text_teacher_is_not_called_code_carrying(fake_cifar: Path, save_dir: Path) -> None:
    path = save_dir / TEACHER_REL
    path.write_text("this is a README, not a checkpoint\n")
    proc = run(student(fake_cifar, save_dir))
    line = assert_one_line_error(proc, str(path), "is not a PyTorch checkpoint (not a zip/pickle file)")
    assert "import or call code" not in line
    assert_teacher_never_called(proc, save_dir)


def test_truncated_teacher_checkpoint(fake_cifar: Path, save_dir: Path) -> None:
    path = save_dir / TEACHER_REL
    path.write_bytes(path.read_bytes()[:20000])
    proc = run(student(fake_cifar, save_dir))
    assert_one_line_error(proc, str(path), "truncated or not a PyTorch checkpoint", "re-train")
    assert_teacher_never_called(proc, save_dir)


def test_teacher_checkpoint_of_another_architecture(fake_cifar: Path, save_dir: Path) -> None:
    from models import model_dict

    path = save_dir / TEACHER_REL
    torch.save({"model": model_dict["resnet14"](num_classes=100).state_dict()}, path)
    proc = run(student(fake_cifar, save_dir))
    assert_one_line_error(proc, str(path), "does not hold a resnet8 model", "unexpected keys", "--model_t")
    assert_teacher_never_called(proc, save_dir)


class _RunsCode:
    """Unpickling this runs ``os.system(command)``: what a malicious checkpoint would carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def test_code_executing_checkpoint_is_refused(fake_cifar: Path, save_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = save_dir / TEACHER_REL
    torch.save({"model": _RunsCode(f"touch {marker}"), "epoch": 240}, path)
    proc = run(student(fake_cifar, save_dir))
    assert_one_line_error(proc, "refused to load", str(path), "weights_only=True", "nothing was run", "trust")
    assert not marker.exists(), "the checkpoint's code ran"
    assert_teacher_never_called(proc, save_dir)
    # the control: the same file does run its code when loaded without weights_only, so the refusal is what saved us
    control = tmp_path / "CONTROL"
    torch.save({"model": _RunsCode(f"touch {control}")}, tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert control.exists()


# ---------------------------------------------------------------- run folder


def test_resume_without_a_checkpoint(fake_cifar: Path, save_dir: Path) -> None:
    proc = run(student(fake_cifar, save_dir, "--resume"))
    assert_one_line_error(proc, "--resume was given but", "last.pth does not exist", "drop --resume")
    assert_teacher_never_called(proc, save_dir)


def test_unwritable_save_dir(fake_cifar: Path, save_dir: Path, tmp_path: Path) -> None:
    # tests run as root, where chmod stops nothing: a path below a regular file can never be created, for anyone
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    bad = blocker / "save"
    proc = run(student(fake_cifar, save_dir, "--save_dir", str(bad)))
    assert_one_line_error(proc, f"cannot write to {bad}", "Not a directory", "writable --save_dir")
    assert "teacher calls" not in proc.stdout
    assert blocker.read_text() == "not a folder\n"
    assert student_files(save_dir) == []


# ---------------------------------------------------------------- sweep files


def _sweep(tmp_path: Path, parameters: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "X.yml"
    path.write_text("program: train_student.py\nmethod: grid\nparameters:\n" + parameters)
    return run(["scripts/sweep.py", str(path), "--dry-run"])


def test_sweep_with_an_unknown_flag(tmp_path: Path) -> None:
    proc = _sweep(tmp_path, "  relatonal: {value: ckd}\n  seed: {values: [1, 2]}\n")
    assert_one_line_error(proc, "X.yml", "'relatonal' is not a flag of train_student.py", "--help")
    assert proc.stdout == ""  # not one command printed, nothing launched


def test_sweep_value_outside_a_flags_choices(tmp_path: Path) -> None:
    proc = _sweep(tmp_path, "  relational: {values: [ckd, foo]}\n")
    assert_one_line_error(proc, "X.yml, run 2 of 2", "--relational", "invalid choice: 'foo'", "fix that value")
    assert proc.stdout == ""


# ---------------------------------------------------------------- train_teacher.py


@pytest.mark.parametrize("extra,keywords", [
    (["--learning_rate", "-1"], ["--learning_rate", "positive", "-1"]),
    (["--save_freq", "0"], ["--save_freq", "at least 1", "got 0"]),
    (["--weight_decay", "-1"], ["--weight_decay", "0 or more"]),
    (["--momentum", "-1"], ["--momentum", "0 or more"]),
    (["--epochs", "0"], ["--epochs", "at least 1", "got 0"]),
    (["--batch_size", "1"], ["--batch_size", "at least 2", "got 1"]),
    (["--lr_decay_epochs", "150,x"], ["--lr_decay_epochs", "comma-separated", "150,x"]),
    (["--lr_decay_rate", "-0.1"], ["--lr_decay_rate", "positive"]),
    (["--trial", "0"], ["--trial", "at least 1"]),
], ids=["learning_rate", "save_freq", "weight_decay", "momentum", "epochs", "batch_size", "lr_decay_epochs",
        "lr_decay_rate", "trial"])
def test_teacher_flags_out_of_range(tmp_path: Path, extra: list[str], keywords: list[str]) -> None:
    save = tmp_path / "save"
    proc = run(teacher(save, *extra))
    assert_one_line_error(proc, *keywords)
    assert not save.exists()  # no teacher folder, not even an empty one


def test_teacher_data_missing_offline_leaves_no_folder(tmp_path: Path) -> None:
    save, data = tmp_path / "save", tmp_path / "no_cifar"
    url = f"http://127.0.0.1:{_closed_port()}/cifar-100-python.tar.gz"
    proc = run(teacher(save, "--dataset", "cifar100", "--data_folder", str(data)), {"CIFAR100_URL": url, "CIFAR100_TIMEOUT": "5"})
    assert_one_line_error(proc, "CIFAR-100 is not in", "could not be downloaded")
    assert not save.exists()


def test_teacher_unknown_model(tmp_path: Path) -> None:
    save = tmp_path / "save"
    proc = run(teacher(save, "--model", "resnet9000"))
    assert_one_line_error(proc, "unknown architecture", "resnet9000", "--model", "resnet110")
    assert not save.exists()


def test_teacher_unwritable_save_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc = run(teacher(blocker / "save"))
    assert_one_line_error(proc, f"cannot write to {blocker / 'save'}", "Not a directory", "writable --save_dir")
    assert blocker.read_text() == "x" and sorted(tmp_path.iterdir()) == [blocker]


def test_teacher_resume_without_a_checkpoint(tmp_path: Path) -> None:
    save = tmp_path / "save"
    proc = run(teacher(save, "--resume"))
    assert_one_line_error(proc, "--resume was given but", "last.pth does not exist", "drop --resume")
    assert not save.exists()  # no epoch trained, no checkpoint written, no empty folder
