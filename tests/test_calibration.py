"""CKD's free per-class logit offset, and --calibrate train_mean, which removes it without a teacher call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import train_student
from distiller_zoo import CKDLoss, DistillKL, LogitPairs, apply_to_pairs
from helper.calibration import classifier_name, fold_shift, shifted, train_mean_shift, validation_sample
from models import model_dict
from tests.test_train_student import base_args


def _groups(seed: int, b: int = 6, c: int = 10):
    g = torch.Generator().manual_seed(seed)
    s_pos, s_neg, t_pos, t_neg = (torch.randn(b, c, generator=g, dtype=torch.float64) for _ in range(4))
    y = torch.nn.functional.one_hot(torch.randint(c, (2, b), generator=g), c).double()
    return s_pos, s_neg, t_pos, t_neg, y[0], y[1]


@pytest.mark.parametrize("w_kd", [0.0, 1.0])
def test_ckd_loss_is_blind_to_a_vector_added_to_every_student_logit(w_kd):
    s_pos, s_neg, t_pos, t_neg, y_pos, y_neg = _groups(0)
    offset = 25.0 * torch.randn(1, s_pos.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss = CKDLoss("ckd")

    def terms(s_pos: torch.Tensor, s_neg: torch.Tensor) -> dict:
        delta_s, delta_t, delta_y = loss.combined(s_pos, s_neg, t_pos, t_neg, y_pos, y_neg, teacher=True)
        out = loss.terms_of(delta_s, delta_t, delta_y)
        if w_kd:  # KD on the combined pair, as the method applies it
            out["kd"] = w_kd * apply_to_pairs(DistillKL(4.0), LogitPairs([delta_s], [delta_t]))
        return out

    plain = terms(s_pos, s_neg)
    moved = terms(s_pos + offset, s_neg + offset)
    assert plain.keys() == moved.keys()
    for key in plain:
        torch.testing.assert_close(moved[key], plain[key], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["ckd_add", "ckd_mixup"])
def test_ckd_add_and_ckd_mixup_see_absolute_logits(mode):
    s_pos, s_neg, t_pos, t_neg, y_pos, y_neg = _groups(2)
    offset = torch.randn(1, s_pos.shape[1], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loss = CKDLoss(mode)
    lam = 0.3 if mode == "ckd_mixup" else None
    plain = loss(s_pos, s_neg, t_pos, t_neg, y_pos, y_neg, lam=lam)
    moved = loss(s_pos + offset, s_neg + offset, t_pos, t_neg, y_pos, y_neg, lam=lam)
    for key in ("cls", "rel"):
        assert abs(float(moved[key] - plain[key])) > 1e-3


def _method(fake_cifar, save_dir, *flags):
    """A built CKD method on the fake CIFAR pool, as the trainer builds it."""
    from helper.config import parse_student_args
    from helper.student_trainer import StudentRun

    run = StudentRun(parse_student_args(base_args(fake_cifar, save_dir, *flags)))
    run._prepare_data()
    run._prepare_teacher_cache()
    run._prepare_student()
    return run


@pytest.mark.parametrize("flags", [("--relational", "ckd"), ("--relational", "ckd_inter", "--distill", "hint")],
                         ids=["ckd", "ckd_inter"])
def test_a_ckd_step_gives_the_classifier_bias_zero_gradient(fake_cifar, save_dir, flags):
    run = _method(fake_cifar, save_dir, *flags, "--w_kd", "0")
    batch = run.sampler.next_batch()
    terms = run.method(batch)
    logit_terms = sum(v for k, v in terms.items() if k != "inter")
    run.optimizer.zero_grad(set_to_none=True)
    logit_terms.backward()
    name = classifier_name(run.student, run.data.num_classes)
    bias_grad = run.student.get_submodule(name).bias.grad
    weight_grad = run.student.get_submodule(name).weight.grad
    assert bias_grad is not None and float(bias_grad.abs().max()) < 1e-7
    assert float(weight_grad.abs().max()) > 1e-5  # the loss does train the classifier, only not its offset


@pytest.mark.parametrize(("flags", "order"), [
    (("--relational", "ckd", "--w_kd", "0.5", "--w_cls", "2", "--w_rel_scale", "3"), ["cls", "rel", "kd"]),
    (("--relational", "mixup", "--w_kd", "0.5", "--w_cls", "2", "--w_rel_scale", "3"), ["cls", "rel", "kd"]),
    (("--w_kd", "0.5", "--w_cls", "2"), ["cls", "kd"]),
    (("--relational", "ckd", "--w_cls", "0"), ["rel"]),
], ids=["ckd", "mixup", "kd", "ckd_no_cls"])
def test_methods_return_unweighted_terms_and_weigh_them_in_one_place(fake_cifar, save_dir, flags, order):
    run = _method(fake_cifar, save_dir, *flags)
    method = run.method
    raw = method.losses_from(method.inputs(run.sampler.next_batch()))
    assert list(raw) == order  # a term with weight 0 is not computed
    weights = {"cls": float(flags[flags.index("--w_cls") + 1]), "kd": 0.5 if "--w_kd" in flags else 0.0,
               "rel": 3.0 if "--w_rel_scale" in flags else (1.0 if "--relational" in flags else 0.0), "inter": 0.0}
    assert method.weights == weights
    weighted = method.weighted(raw)
    assert list(weighted) == order and all(torch.equal(weighted[k], weights[k] * raw[k]) for k in order)


def test_shift_is_folded_into_the_bias_and_restored_exactly():
    torch.manual_seed(0)
    model = model_dict["resnet8"](num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    shift = torch.randn(10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        base = model(x)
        with shifted(model, shift, 10):
            moved = model(x)
    torch.testing.assert_close(moved, base + shift, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    fresh = model_dict["resnet8"](num_classes=10).eval()
    fresh.load_state_dict(fold_shift(model.state_dict(), model, shift, 10))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), base + shift, rtol=1e-5, atol=1e-5)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    teacher_logits = torch.randn(8, 10)
    norm = lambda u: u.float() / 255.0  # noqa: E731
    delta = train_mean_shift(model, images, teacher_logits, norm)
    with torch.no_grad(), shifted(model, delta, 10):
        calibrated_mean = model(norm(images)).mean(0)
    torch.testing.assert_close(calibrated_mean, teacher_logits.mean(0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet50"])
def test_every_family_has_a_classifier_bias(name):
    model = model_dict[name](num_classes=100)
    assert model.get_submodule(classifier_name(model, 100)).bias.shape == (100,)


def _results(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(Path(out[-1].removeprefix("results: ")).read_text())


def test_calibrated_run_saves_a_plain_model_that_reproduces_test_acc(fake_cifar, save_dir, capsys):
    common = ("--relational", "ckd", "--epochs", "3", "--patience", "50", "--deterministic", "--keep_last")
    train_student.main(base_args(fake_cifar, save_dir, *common))
    plain = _results(capsys)
    train_student.main(base_args(fake_cifar, save_dir, *common, "--calibrate", "train_mean"))
    calibrated = _results(capsys)
    assert calibrated["teacher_calls"] == plain["teacher_calls"] == 160  # calibration makes no teacher call
    for res in (plain, calibrated):
        assert {"test_acc_calibrated", "calibration_shift_norm", "cache_bytes"} <= set(res)
        assert res["calibration_shift_norm"] > 0
    assert calibrated["test_acc_calibrated"] == calibrated["test_acc"]
    run_dir = Path(save_dir) / "student"
    cal_dir = next(d for d in run_dir.iterdir() if json.loads((d / "results.json").read_text())["config"]["calibrate"]
                   == "train_mean")
    plain_dir = next(d for d in run_dir.iterdir() if d != cal_dir)
    # the optimiser's model is untouched: with no schedule decay, the last weights are identical
    last_cal = torch.load(cal_dir / "last.pth", weights_only=True)["model"]
    last_plain = torch.load(plain_dir / "last.pth", weights_only=True)["model"]
    assert all(torch.equal(last_cal[k], last_plain[k]) for k in last_plain)
    assert not (cal_dir / "teacher_cache.pth").exists()  # deleted once the run finished
    # best.pth is a plain model_dict checkpoint whose bias holds the shift: it reproduces test_acc exactly
    from dataset import load_dataset
    from dataset.augment import DeviceAugment
    from helper.engine import evaluate

    _, test = load_dataset("cifar100", fake_cifar, download=False)
    model = model_dict["resnet8"](num_classes=100)
    model.load_state_dict(torch.load(cal_dir / "best.pth", weights_only=True)["model"])
    acc = evaluate(model, test.images, test.labels, DeviceAugment(test.mean, test.std, 0, "cpu").normalize)["acc"]
    assert acc == calibrated["test_acc"]


def test_the_validation_sample_is_fixed_and_small_runs_use_the_whole_split():
    assert validation_sample(160, seed=1) is None and validation_sample(256, seed=1) is None  # the whole split
    sample = validation_sample(1600, seed=1)
    assert sample is not None and sample.shape == (320,) and torch.equal(sample, validation_sample(1600, seed=1))
    assert torch.equal(sample, sample.sort().values) and sample.unique().numel() == 320 and int(sample.max()) < 1600
    assert not torch.equal(sample, validation_sample(1600, seed=2))
    assert validation_sample(40000, seed=1).shape == (8000,)


def test_the_sampled_shift_is_the_paired_mean_over_the_sample():
    """On a sample: mean over the sampled images of (teacher logits averaged over the views - student logits); on every
    image (views 2) it is the full-split shift."""
    torch.manual_seed(0)
    model = model_dict["resnet8"](num_classes=10).eval()
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    teacher_logits = torch.randn(80, 10)  # 2 views, view-major

    def norm(x):
        return x.float() / 255

    sample = torch.tensor([1, 5, 7, 30])
    with torch.no_grad():
        student = model(norm(images[sample]))
    expected = ((teacher_logits[sample] + teacher_logits[40 + sample]) / 2 - student).mean(0)
    torch.testing.assert_close(train_mean_shift(model, images, teacher_logits, norm, sample=sample), expected)
    everything = train_mean_shift(model, images, teacher_logits, norm, sample=torch.arange(40))
    torch.testing.assert_close(everything, train_mean_shift(model, images, teacher_logits, norm), rtol=1e-5, atol=1e-5)


def _row_flags(row) -> tuple[str, ...]:
    """The flags that run a method-table row (the default weights, --w_cls 1 included)."""
    from helper.method_table import LOGIT_PAIR, WHITE_BOX

    if row.kind == WHITE_BOX:
        return ("--distill", row.name)
    if row.kind == LOGIT_PAIR:
        return (f"--{row.weight_flag}", "1")
    flags: tuple[str, ...] = ("--relational", row.name)
    if row.with_white_box:
        flags += ("--distill", "hint")
    if row.image_views > 1:
        flags += ("--teacher_views", str(row.image_views))
    return flags


def test_every_rows_offset_free_fact_is_what_its_loss_does(fake_cifar, save_dir):
    """The method table's offset_free is a fact about the loss, checked for every row: one step of the method as a run
    builds it (default weights) gives the classifier bias zero gradient exactly when the row says the offset is free."""
    from helper.method_table import METHODS, offset_free

    free = []
    for row in METHODS:
        run = _method(fake_cifar, save_dir, *_row_flags(row))
        terms = run.method(run.sampler.next_batch())
        run.optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        layer = run.student.get_submodule(classifier_name(run.student, run.data.num_classes))
        assert float(layer.weight.grad.abs().max()) > 1e-5, row.name  # the classifier itself is trained
        if float(layer.bias.grad.abs().max()) < 1e-7:
            free.append(row.name)
        assert offset_free(run.opt.to_dict()) == row.offset_free, row.name
    assert free == [row.name for row in METHODS if row.offset_free] == ["ckd", "ckd_inter"]
