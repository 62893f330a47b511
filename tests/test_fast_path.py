"""The fast path (--amp, --channels_last, --compile) trains like the default path, and the CRD scores take the cheap route.

Everything runs on the CPU with tiny seeded set-ups (resnet8, 160 training images, batch 16), built by the same
functions as train_student.py (helper.student_trainer), stepped by helper.engine.train_step.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

import train_student
import train_teacher
from core.checkpoint import safe_load
from crd.memory import ContrastMemory, scores_against_bank
from dataset import CIFAR100_MEAN, CIFAR100_STD
from dataset.augment import DeviceAugment
from helper.config import parse_student_args
from helper.engine import evaluate, train_step
from helper.options import teacher_checkpoint_path
from helper.student_trainer import TrainingSetup, build_student, build_training, cache_teacher
from models import model_dict

CPU = torch.device("cpu")
METHODS = {
    "ckd": ["--relational", "ckd"],
    "kd": ["--relational=None", "--w_kd", "1"],
    "mixup": ["--relational", "mixup"],
    "hint": ["--relational=None", "--distill", "hint"],
    "crd": ["--relational", "crd"],
}
STEPS = 3


def make_setup(method: str, *flags: str) -> tuple[TrainingSetup, bool]:
    opt = parse_student_args(["--model_s", "resnet8", "--model_t", "resnet8", "--subset_size", "200",
                              "--batch_size", "16", "--device", "cpu", "--nce_k", "32", "--seed", "3", *METHODS[method], *flags])
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (160, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (160,), generator=g)
    augment = DeviceAugment(CIFAR100_MEAN, CIFAR100_STD, opt.use_DA, CPU)
    torch.manual_seed(1)
    teacher = model_dict["resnet8"](num_classes=100).eval()
    pool, teacher_shapes = cache_teacher(opt, teacher, images, labels, augment, CPU, 100)
    student = build_student(opt, 100, CPU)
    return build_training(opt, student, pool, augment, 100, teacher_shapes, CPU, (3, 32, 32)), opt.amp


def step_losses(setup: TrainingSetup, amp: bool, steps: int = STEPS) -> list[float]:
    setup.method.train()
    return [train_step(setup.method, setup.optimizer, setup.sampler.next_batch(), CPU, amp)["train_loss"].item()
            for _ in range(steps)]


@pytest.fixture(scope="module")
def default_losses() -> dict[str, list[float]]:
    return {method: step_losses(*make_setup(method)) for method in METHODS}


@pytest.mark.parametrize("method", list(METHODS))
def test_channels_last_matches_the_default_path(method: str, default_losses: dict[str, list[float]]) -> None:
    losses = step_losses(*make_setup(method, "--channels_last"))
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(default_losses[method][0], rel=1e-4)
    assert losses == pytest.approx(default_losses[method], rel=1e-2)


@pytest.mark.parametrize("method", list(METHODS))
def test_amp_stays_close_to_the_default_path(method: str, default_losses: dict[str, list[float]]) -> None:
    losses = step_losses(*make_setup(method, "--amp"))
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(default_losses[method][0], rel=0.05)


@pytest.mark.parametrize("method", ["ckd", "mixup", "kd", "hint"])
def test_channels_last_reaches_the_student_inputs(method: str) -> None:
    setup, amp = make_setup(method, "--channels_last", "--amp")
    seen: list[bool] = []
    setup.method.student.conv1.register_forward_pre_hook(
        lambda _m, inputs: seen.append(inputs[0].is_contiguous(memory_format=torch.channels_last)))
    assert setup.method.student.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    step_losses(setup, amp, steps=1)
    assert seen and all(seen)


def test_evaluation_under_amp_and_channels_last_matches() -> None:
    setup, _ = make_setup("kd", "--channels_last")
    pool, student = setup.method.ctx.pool, setup.method.student
    normalize = setup.method.ctx.augment.normalize
    plain = evaluate(student, pool.images, pool.labels, normalize, batch_size=64)
    fast = evaluate(student, pool.images, pool.labels, normalize, batch_size=64, amp=True, channels_last=True)
    assert fast["loss"] == pytest.approx(plain["loss"], rel=0.05)
    assert abs(fast["acc"] - plain["acc"]) <= 5.0


@pytest.mark.slow(reason="torch.compile (inductor) of resnet8 forward + backward takes about 70 s on 2 CPU cores")
def test_compile_matches_the_default_path_and_keeps_checkpoint_keys(default_losses, fake_cifar, tiny_teacher, tmp_path) -> None:
    start = time.perf_counter()
    setup, amp = make_setup("ckd", "--compile")
    assert type(setup.method.student).__name__ == "OptimizedModule"
    losses = step_losses(setup, amp)
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(default_losses["ckd"][0], rel=1e-3)
    # the trainer with --compile --channels_last --amp writes checkpoints with the plain module keys
    save_dir = tmp_path / "save"
    teacher = teacher_checkpoint_path(tiny_teacher, "cifar100", "resnet8")
    train_student.main(["--model_s", "resnet8", "--model_t", "resnet8", "--path_t", str(teacher), "--subset_size", "200",
                        "--epochs", "1", "--dataset", "cifar100", "--data_folder", str(fake_cifar), "--device", "cpu",
                        "--batch_size", "32", "--relational", "ckd", "--save_dir", str(save_dir), "--compile",
                        "--channels_last", "--amp", "--keep_last"])
    run_dir = next((save_dir / "student").iterdir())
    plain_keys = set(model_dict["resnet8"](num_classes=100).state_dict())
    for name in ("best.pth", "last.pth"):
        assert set(safe_load(run_dir / name, map_location="cpu")["model"]) == plain_keys
    print(f"compile test took {time.perf_counter() - start:.0f} s")


def test_teacher_trainer_fast_path(fake_cifar: Path, tmp_path: Path) -> None:
    save_dir = tmp_path / "save"
    train_teacher.main(["--model", "resnet8", "--dataset", "cifar100", "--data_folder", str(fake_cifar), "--epochs", "1",
                        "--device", "cpu", "--save_dir", str(save_dir), "--amp", "--channels_last", "--batch_size", "64"])
    ckpt = safe_load(teacher_checkpoint_path(save_dir, "cifar100", "resnet8"), map_location="cpu")
    state = ckpt["model"]
    assert set(state) == set(model_dict["resnet8"](num_classes=100).state_dict())
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ---------------------------------------------------------------------------------------------- CRD scores
@pytest.mark.parametrize("n_bank", [20, 500])  # 20 rows <= B*(K+1) = 48 candidates: one [B, N] product; 500: gathered rows
def test_crd_scores_match_the_definition_with_gradients(n_bank: int) -> None:
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(n_bank, 8, generator=g, dtype=torch.float64), dim=1)
    idx = torch.randint(0, n_bank, (4, 12), generator=g)
    anchors = torch.randn(4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    out = scores_against_bank(bank, idx, anchors, 0.07)
    reference = torch.exp((bank[idx] * anchors[:, None, :]).sum(-1, keepdim=True) / 0.07)
    assert out.shape == (4, 12, 1)
    torch.testing.assert_close(out, reference, rtol=1e-10, atol=0)
    weights = torch.rand(4, 12, 1, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weights).sum(), anchors)
    (grad_ref,) = torch.autograd.grad((reference * weights).sum(), anchors)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


def test_crd_dense_scores_survive_the_in_place_bank_update() -> None:
    """The dense route keeps the bank as it was at the forward: the momentum update afterwards must not change the grads."""
    torch.manual_seed(0)
    mem = ContrastMemory(6, 10, 31)  # 10 rows, 4 * 32 candidates: the dense route
    v1 = torch.randn(4, 6, requires_grad=True)
    v2 = torch.randn(4, 6, requires_grad=True)
    y = torch.arange(4)
    idx = torch.randint(0, 10, (4, 32))
    bank1, bank2 = mem.memory_v1.clone(), mem.memory_v2.clone()
    out_v1, out_v2 = mem(v1, v2, y, idx)
    assert not torch.equal(mem.memory_v1, bank1)  # the rows of y were updated in place
    (out_v1.sum() + out_v2.sum()).backward()
    ref_v1 = torch.exp((bank2[idx] * v1.detach()[:, None]).sum(-1) / mem.T)
    grad_ref = ((ref_v1[..., None] * bank2[idx]).sum(1) / mem.T) / mem.params[2]
    torch.testing.assert_close(v1.grad, grad_ref, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(v2.grad).all() and bank1.shape == mem.memory_v1.shape
