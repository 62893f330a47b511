"""Shared test setup: tests run on the CPU, single-threaded where timing does not matter, offline."""

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# the scripts the tests start in subprocesses (scripts/*.py, train_*.py) import this checkout first, whatever
# checkout the interpreter's environment has installed (make venv installs the project editable, see pyproject.toml)
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tests run beside other work on 2 cores; determinism does not depend on it


@pytest.fixture(scope="session")
def fake_cifar(tmp_path_factory) -> Path:
    """A small CIFAR-100 folder in the real pickle format (300 train / 100 test images)."""
    from tests.cifar_fixture import make_fake_cifar100

    root = tmp_path_factory.mktemp("cifar")
    make_fake_cifar100(root, n_train=300, n_test=100, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A resnet8 CIFAR-100 teacher saved in the RepDistiller format; returns its save_dir."""
    from helper.options import teacher_checkpoint_path
    from models import model_dict

    save_dir = tmp_path_factory.mktemp("save")
    torch.manual_seed(0)
    model = model_dict["resnet8"](num_classes=100)
    path = teacher_checkpoint_path(save_dir, "cifar100", "resnet8")
    path.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "epoch": 240, "accuracy": 1.0}, path)
    return save_dir


@pytest.fixture()
def save_dir(tiny_teacher: Path, tmp_path: Path) -> Path:
    """A fresh save_dir of this test holding a copy of the tiny CIFAR-100 teacher."""
    target = tmp_path / "save"
    shutil.copytree(tiny_teacher, target)
    return target


@pytest.fixture(scope="module")
def digits_save(tmp_path_factory) -> Path:
    """A save_dir holding a random-init resnet8 digits teacher (10 classes) where train_student.py looks for it (one
    per test module: the module's runs are written beside it)."""
    from helper.options import teacher_checkpoint_path
    from models import model_dict

    save_dir = tmp_path_factory.mktemp("digits_save")
    torch.manual_seed(0)
    path = teacher_checkpoint_path(save_dir, "digits", "resnet8")
    path.parent.mkdir(parents=True)
    torch.save({"model": model_dict["resnet8"](num_classes=10).state_dict(), "epoch": 240, "accuracy": 1.0}, path)
    return save_dir
