"""Logit methods of 2023-2024: logit standardization (Sun et al., CVPR 2024), TTM and WTTM (Zheng & Yang, ICLR 2024)
and MLKD (Jin et al., CVPR 2023).

Every golden value is recomputed here from the paper's formula (in each reference's docstring) with numpy and plain
Python loops in float64, independently of the implementation under test; gradients are checked with
``torch.autograd.gradcheck``; each method then trains a digits student end to end with n_train x views teacher calls.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import train_student
from core.errors import UserError
from dataset.teacher_cache import TrainPool
from distiller_zoo import DKD, MLKD, TTM, WTTM, DistillKL, bc_loss, cc_loss, distill_kl, dkd_loss, logit_standardize, mlkd_loss
from distiller_zoo.mlkd import MLKDTerm
from distiller_zoo.terms import TermContext
from distiller_zoo.ttm import TTMTerm, WTTMTerm
from helper import method_table
from helper.config import StudentConfig, parse_student_args
from helper.methods import term_args
from helper.options import build_student_parser, teacher_checkpoint_path

REL = 1e-10  # float64 everywhere; the bar against the official code is 1e-4


def _rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


# ------------------------------------------------------------------------------------ float64 references


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def _ls_ref(z: np.ndarray) -> np.ndarray:
    """Sun et al. Eq. 9 as coded: per row (z - mean) / (1e-7 + unbiased std)."""
    out = np.empty_like(z)
    for i, row in enumerate(z):
        n = row.shape[0]
        mean = sum(row) / n
        std = (sum((x - mean) ** 2 for x in row) / (n - 1)) ** 0.5
        out[i] = (row - mean) / (1e-7 + std)
    return out


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(a * (np.log(a) - np.log(b)) for a, b in zip(p, q) if a > 0))


def _kd_ref(s: np.ndarray, t: np.ndarray, T: float) -> float:
    """Hinton et al.: T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T))."""
    return T * T * sum(_kl(_softmax(ti / T), _softmax(si / T)) for si, ti in zip(s, t)) / s.shape[0]


def _dkd_ref(s: np.ndarray, t: np.ndarray, y: np.ndarray, alpha: float, beta: float, T: float) -> float:
    """Zhao et al. Eq. 7: alpha * T^2 KL(b_t || b_s) + beta * T^2 KL(p^_t || p^_s), batch mean; b = [p_g, 1 - p_g],
    p^ = softmax over the non-target classes."""
    total = 0.0
    for si, ti, g in zip(s, t, y):
        ps, pt = _softmax(si / T), _softmax(ti / T)
        bs, bt = np.array([ps[g], 1 - ps[g]]), np.array([pt[g], 1 - pt[g]])
        keep = [c for c in range(s.shape[1]) if c != g]
        total += alpha * _kl(bt, bs) + beta * _kl(_softmax(ti[keep] / T), _softmax(si[keep] / T))
    return T * T * total / s.shape[0]


def _ttm_ref(s: np.ndarray, t: np.ndarray, l: float, weighted: bool) -> float:
    """Zheng & Yang Eq. 11 / 13: KL(p_t^l / sum p_t^l || softmax(s)), times sum p_t^l for WTTM, batch mean."""
    total = 0.0
    for si, ti in zip(s, t):
        powered = _softmax(ti) ** l
        w = powered.sum()
        total += (w if weighted else 1.0) * _kl(powered / w, _softmax(si))
    return total / s.shape[0]


def _probs(z: np.ndarray, T: float) -> np.ndarray:
    return np.stack([_softmax(row / T) for row in z])


def _cc_ref(s: np.ndarray, t: np.ndarray, T: float) -> float:
    """Jin et al. class correlation: sum_{j,k} (sum_i pt_ij pt_ik - sum_i ps_ij ps_ik)^2 / C."""
    ps, pt = _probs(s, T), _probs(t, T)
    b, c = s.shape
    total = 0.0
    for j in range(c):
        for k in range(c):
            d = sum(pt[i, j] * pt[i, k] - ps[i, j] * ps[i, k] for i in range(b))
            total += d * d
    return total / c


def _bc_ref(s: np.ndarray, t: np.ndarray, T: float) -> float:
    """Jin et al. batch correlation: sum_{i,m} (sum_j pt_ij pt_mj - sum_j ps_ij ps_mj)^2 / B."""
    ps, pt = _probs(s, T), _probs(t, T)
    b, _ = s.shape
    total = 0.0
    for i in range(b):
        for m in range(b):
            d = float(np.dot(pt[i], pt[m]) - np.dot(ps[i], ps[m]))
            total += d * d
    return total / b


def _mlkd_ref(sw: np.ndarray, tw: np.ndarray, ss: np.ndarray, ts: np.ndarray, T: float, stand: bool) -> float:
    """MLKD as its authors compute it: temperatures (T, 3, 5, 2, 6); sample mask: top teacher probability (weak view, T=1)
    at most its median; class mask: summed probability at most its median; each mask enters as its kept fraction."""
    temps = [T, 3.0, 5.0, 2.0, 6.0]
    pt = _probs(tw, 1.0)
    conf, class_conf = pt.max(axis=1), pt.sum(axis=0)
    frac = float(np.mean(conf <= np.percentile(conf, 50)))
    class_frac = float(np.mean(class_conf <= np.percentile(class_conf, 50)))
    kd_in = (_ls_ref(sw), _ls_ref(tw), _ls_ref(ss), _ls_ref(ts)) if stand else (sw, tw, ss, ts)
    kw = sum(_kd_ref(kd_in[0], kd_in[1], x) for x in temps) * frac
    ks = sum(_kd_ref(kd_in[2], kd_in[3], x) for x in temps[:3]) + sum(_kd_ref(kd_in[0], kd_in[1], x) for x in temps[3:])
    cc = sum(_cc_ref(sw, tw, x) for x in temps) * class_frac
    bc = sum(_bc_ref(sw, tw, x) for x in temps) * frac
    return kw + ks + cc + bc


# ------------------------------------------------------------------------------------ logit standardization


def test_logit_standardize_golden() -> None:
    z = _rand(5, 7, seed=1, scale=3.0) + 2.0
    np.testing.assert_allclose(logit_standardize(z).numpy(), _ls_ref(z.numpy()), rtol=REL, atol=1e-12)


def test_standardized_logits_are_invariant_to_positive_affine_maps() -> None:
    z = _rand(4, 9, seed=2)
    assert torch.allclose(logit_standardize(3.5 * z - 7.0), logit_standardize(z), atol=1e-6)


@pytest.mark.parametrize("T", [2.0, 4.0])
def test_kd_on_standardized_logits_golden(T: float) -> None:
    """Acceptance: distill_kl on standardized logits (T = 2), and DistillKL(standardize=True), equal the formula."""
    s, t = _rand(6, 10, seed=3, scale=2.0), _rand(6, 10, seed=4, scale=5.0)
    expected = _kd_ref(_ls_ref(s.numpy()), _ls_ref(t.numpy()), T)
    assert float(distill_kl(logit_standardize(s), logit_standardize(t), T)) == pytest.approx(expected, rel=REL)
    assert float(DistillKL(T, standardize=True)(s, t)) == pytest.approx(expected, rel=REL)
    assert float(DistillKL(T)(s, t)) == pytest.approx(_kd_ref(s.numpy(), t.numpy(), T), rel=REL)  # default unchanged


def test_dkd_on_standardized_logits_golden() -> None:
    """Acceptance: dkd_loss on standardized logits (alpha 1, beta 8, T 2), also through DKD(logit_stand=True)."""
    s, t = _rand(6, 10, seed=5, scale=2.0), _rand(6, 10, seed=6, scale=4.0)
    y = torch.tensor([0, 3, 9, 3, 5, 1])
    expected = _dkd_ref(_ls_ref(s.numpy()), _ls_ref(t.numpy()), y.numpy(), 1.0, 8.0, 2.0)
    assert float(dkd_loss(logit_standardize(s), logit_standardize(t), y, 1.0, 8.0, 2.0)) == pytest.approx(expected, rel=1e-9)
    module = DKD(1.0, 8.0, 2.0, warmup=1, logit_stand=True)
    assert float(module(s, t, y, epoch=1)) == pytest.approx(expected, rel=1e-9)


def test_standardized_kd_gradient() -> None:
    s, t = _rand(3, 5, seed=7).requires_grad_(), _rand(3, 5, seed=8)
    assert torch.autograd.gradcheck(logit_standardize, (s,))
    assert torch.autograd.gradcheck(lambda x: DistillKL(2.0, standardize=True)(x, t), (s,))
    assert torch.autograd.gradcheck(lambda x: DKD(1.0, 8.0, 2.0, warmup=1, logit_stand=True)(x, t, torch.tensor([0, 2, 4]), 1),
                                    (s,))


# ------------------------------------------------------------------------------------ TTM and WTTM


@pytest.mark.parametrize("l", [0.1, 0.2, 0.5])
def test_ttm_and_wttm_golden(l: float) -> None:
    """Acceptance: TTM(0.1) and WTTM(0.2) (and other exponents) equal the formula on random logits."""
    s, t = _rand(6, 10, seed=9, scale=2.0), _rand(6, 10, seed=10, scale=6.0)
    assert float(TTM(l)(s, t)) == pytest.approx(_ttm_ref(s.numpy(), t.numpy(), l, weighted=False), rel=REL)
    assert float(WTTM(l)(s, t)) == pytest.approx(_ttm_ref(s.numpy(), t.numpy(), l, weighted=True), rel=REL)


def test_ttm_with_exponent_one_is_kd_at_temperature_one() -> None:
    s, t = _rand(5, 8, seed=11), _rand(5, 8, seed=12)
    assert float(TTM(1.0)(s, t)) == pytest.approx(float(distill_kl(s, t, 1.0)), rel=REL)


def test_ttm_gradients_and_detached_teacher() -> None:
    s, t = _rand(3, 6, seed=13).requires_grad_(), _rand(3, 6, seed=14, scale=3.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: TTM(0.1)(x, t), (s,))
    assert torch.autograd.gradcheck(lambda x: WTTM(0.2)(x, t), (s,))
    WTTM(0.2)(s, t).backward()
    assert t.grad is None


def test_ttm_finite_for_confident_teachers() -> None:
    s = torch.tensor([[80.0, -60.0, 0.0]], requires_grad=True)
    t = torch.tensor([[-700.0, 900.0, 0.0]])
    for loss in (TTM(0.1)(s, t), WTTM(0.2)(s, t)):
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_ttm_rejects_a_nonpositive_exponent() -> None:
    with pytest.raises(ValueError, match="positive"):
        TTM(0.0)


# ------------------------------------------------------------------------------------ MLKD


@pytest.mark.parametrize("T", [4.0, 2.0])
def test_cc_and_bc_loss_golden(T: float) -> None:
    """Acceptance: cc_loss and bc_loss (T = 4) equal the class and batch correlation formulas."""
    s, t = _rand(7, 5, seed=15, scale=2.0), _rand(7, 5, seed=16, scale=3.0)
    assert float(cc_loss(s, t, T)) == pytest.approx(_cc_ref(s.numpy(), t.numpy(), T), rel=1e-9)
    assert float(bc_loss(s, t, T)) == pytest.approx(_bc_ref(s.numpy(), t.numpy(), T), rel=1e-9)


@pytest.mark.parametrize("stand", [False, True])
def test_mlkd_loss_golden(stand: bool) -> None:
    b, c = 8, 6
    sw, tw, ss, ts = (_rand(b, c, seed=17 + k, scale=1.0 + k) for k in range(4))
    expected = _mlkd_ref(sw.numpy(), tw.numpy(), ss.numpy(), ts.numpy(), 4.0, stand)
    assert float(mlkd_loss(sw, tw, ss, ts, 4.0, stand)) == pytest.approx(expected, rel=1e-9)
    assert float(MLKD(4.0, stand)(sw, tw, ss, ts)) == pytest.approx(expected, rel=1e-9)


def test_mlkd_gradients() -> None:
    tw, ts = _rand(4, 5, seed=21, scale=2.0), _rand(4, 5, seed=22, scale=2.0)
    sw, ss = _rand(4, 5, seed=23).requires_grad_(), _rand(4, 5, seed=24).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: cc_loss(x, tw, 4.0), (sw,))
    assert torch.autograd.gradcheck(lambda x: bc_loss(x, tw, 4.0), (sw,))
    assert torch.autograd.gradcheck(lambda a, b: mlkd_loss(a, tw, b, ts, 4.0, True), (sw, ss))


CTX = TermContext(num_classes=5, student_feat_shapes=[], teacher_feat_shapes=[], n_items=8, n_images=4)


def test_mlkd_term_splits_two_views() -> None:
    cfg = parse_student_args(["--relational", "mlkd", "--kd_T", "3", "--logit_stand"])
    args = term_args(MLKDTerm, cfg)
    assert args == {"kd_T": 3.0, "logit_stand": True}  # exactly its ARGS, from the configuration
    term = MLKDTerm(CTX, **args)
    assert term.temperature == 3.0 and term.logit_stand
    s, t = _rand(8, 5, seed=25), _rand(8, 5, seed=26)
    assert float(term(s, t, None, {})) == pytest.approx(float(mlkd_loss(s[:4], t[:4], s[4:], t[4:], 3.0, True)), rel=REL)


@pytest.mark.parametrize(("argv", "term", "l"), [
    (["--relational", "ttm"], TTMTerm, 0.1), (["--relational", "wttm"], WTTMTerm, 0.2),
    (["--relational", "ttm", "--ttm_l", "0.3"], TTMTerm, 0.3), (["--relational", "wttm", "--ttm_l", "0.5"], WTTMTerm, 0.5),
])
def test_ttm_terms_read_ttm_l_from_their_args(argv: list[str], term: type, l: float) -> None:
    args = term_args(term, parse_student_args(argv))
    assert set(args) == {"ttm_l"} and term(CTX, **args).l == l


@pytest.mark.parametrize("stand", [False, True])
def test_kd_and_dkd_terms_honour_logit_stand_through_their_args(stand: bool) -> None:
    from distiller_zoo import DKDTerm, KDTerm

    cfg = parse_student_args(["--relational", "dkd", "--kd_T", "2", *(["--logit_stand"] if stand else [])])
    kd = KDTerm(CTX, **term_args(KDTerm, cfg))
    dkd = DKDTerm(CTX, **term_args(DKDTerm, cfg))
    assert kd.standardize is stand and kd.T == 2.0
    assert dkd.logit_stand is stand and dkd.temperature == (2.0 if stand else 4.0)  # published T 4 unless standardized


def test_view_items_are_view_major() -> None:
    pool = TrainPool(images=torch.zeros(6, 3, 8, 8, dtype=torch.uint8), labels=torch.zeros(6, dtype=torch.int64),
                     image_ids=torch.arange(3).repeat(2), n_images=3, views=2, teacher_logits=torch.zeros(6, 2))
    assert pool.view_items(torch.tensor([2, 0]), 2).tolist() == [2, 0, 5, 3]
    assert pool.image_ids[pool.view_items(torch.tensor([2, 0]), 2)].tolist() == [2, 0, 2, 0]
    one = TrainPool(images=torch.zeros(3, 3, 8, 8, dtype=torch.uint8), labels=torch.zeros(3, dtype=torch.int64),
                    image_ids=torch.arange(3), n_images=3, views=1, teacher_logits=torch.zeros(3, 2))
    assert one.view_items(torch.tensor([1]), 2).tolist() == [1, 1]  # one cached view: both student views share it


# ------------------------------------------------------------------------------------ flags and the table


def test_rows_of_the_new_methods() -> None:
    expected = {"ttm": 45.0, "wttm": 4.0, "mlkd": 0.9}
    for name, weight in expected.items():
        row = method_table.find("relational", name)
        assert row.kind == method_table.LOGIT and row.weight == weight and row.sampler == "plain"
    assert method_table.find("relational", "mlkd").image_views == 2
    assert {r.name for r in method_table.METHODS if r.logit_stand_ok} == {"kd", "dkd", "mlkd"}
    for row in method_table.METHODS:  # a row honours --logit_stand exactly when its term reads it
        assert row.logit_stand_ok == ("logit_stand" in getattr(method_table.resolve(row.builder), "ARGS", ())), row.name


@pytest.mark.parametrize("args", [["--w_kd", "1", "--logit_stand"], ["--relational", "dkd", "--logit_stand"],
                                  ["--relational", "mlkd", "--logit_stand"], ["--relational", "mlkd", "--teacher_views", "2"],
                                  ["--distill", "attention", "--w_kd", "1", "--logit_stand"]])
def test_accepted_modifiers(args: list[str]) -> None:
    cfg = parse_student_args(args)
    assert cfg.method.relational is method_table.find("relational", cfg.relational)


@pytest.mark.parametrize(("args", "message"), [
    (["--relational", "ttm", "--logit_stand"],
     "--logit_stand standardizes the logits of KD (--w_kd) and of --relational dkd or mlkd, not those of --relational ttm; "
     "drop --logit_stand or choose one of those"),
    (["--relational", "ckd", "--w_kd", "1", "--logit_stand"],
     "--logit_stand standardizes the logits of KD (--w_kd) and of --relational dkd or mlkd, not those of --relational ckd; "
     "drop --logit_stand or choose one of those"),
    (["--logit_stand"],
     "--logit_stand standardizes the logits of KD, but --w_kd is 0; pass --w_kd above 0 (the official recipe: --w_kd 9 "
     "--kd_T 2) or --relational dkd or mlkd"),
    (["--relational", "mlkd", "--teacher_views", "3"],
     "--relational mlkd reads 2 cached teacher views per image, so --teacher_views 3 would query the teacher for views it "
     "never reads; pass --teacher_views 2 or less"),
])
def test_refused_modifiers_in_one_sentence(args: list[str], message: str) -> None:
    """Refused when the configuration is built, from the command line and from Python alike."""
    with pytest.raises(UserError) as err:
        parse_student_args(args)
    assert str(err.value) == message
    with pytest.raises(UserError) as err:
        StudentConfig(**vars(build_student_parser().parse_args(args)))
    assert str(err.value) == message


def test_ttm_l_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:  # refused by the flag's type, with the configuration's words
        parse_student_args(["--relational", "ttm", "--ttm_l", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --ttm_l must be a finite positive number, at most 10, got 0.0\n"
    with pytest.raises(UserError, match="--ttm_l must be a finite positive number"):
        StudentConfig(relational="wttm", ttm_l=-0.2)


def test_new_flags_are_config_fields_with_the_parser_defaults() -> None:
    defaults = vars(build_student_parser().parse_args([]))
    fields = {f.name: f.default for f in dataclasses.fields(StudentConfig) if f.init}
    assert defaults["logit_stand"] is fields["logit_stand"] is False
    assert defaults["ttm_l"] is fields["ttm_l"] is None
    assert set(defaults) == set(fields)


def test_labels_mark_logit_standardization() -> None:
    assert method_table.method_label({"w_kd": 9, "logit_stand": True}) == "kd+ls"
    assert method_table.method_label({"relational": "dkd", "logit_stand": True}) == "dkd+ls"
    assert method_table.method_label({"relational": "ttm", "logit_stand": False}) == "ttm"


# ------------------------------------------------------------------------------------ end to end on digits


def _train(save_dir: Path, out_dir: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    train_student.main(["--dataset", "digits", "--model_s", "resnet8", "--model_t", "resnet8", "--subset_size", "80",
                        "--epochs", "1", "--batch_size", "32", "--device", "cpu", "--save_dir", str(out_dir),
                        "--path_t", str(teacher_checkpoint_path(save_dir, "digits", "resnet8")), *extra])
    path = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("results: "))
    return json.loads(path.read_text())


@pytest.mark.parametrize(("flags", "views"), [
    (["--w_kd", "1", "--logit_stand"], 1),
    (["--relational", "dkd", "--logit_stand", "--kd_T", "2"], 1),
    (["--relational", "ttm"], 1),
    (["--relational", "wttm", "--teacher_views", "2"], 2),
    (["--relational", "mlkd", "--teacher_views", "2"], 2),
    (["--relational", "mlkd", "--logit_stand", "--kd_T", "2"], 1),
], ids=["kd+ls", "dkd+ls", "ttm", "wttm-views2", "mlkd-views2", "mlkd+ls-views1"])
def test_logit_method_trains_on_digits(flags: list[str], views: int, digits_save: Path, tmp_path: Path, capsys) -> None:
    """Acceptance: each trains a digits student end to end and writes results.json, teacher_calls = n_train x views."""
    results = _train(digits_save, tmp_path, capsys, *flags)
    assert results["teacher_calls"] == results["n_train"] * views == 64 * views
    assert results["pseudo_epochs"] == 1 and results["steps"] == 2  # ceil(64 / 32): one pass over the images
    assert 0.0 <= results["test_acc"] <= 100.0


def test_mlkd_gets_both_cached_views_of_the_same_images(digits_save: Path, tmp_path: Path, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int, torch.Tensor]] = []
    original = MLKDTerm.forward

    def spy(self, logits_s, logits_t, labels, batch):
        seen.append((logits_s.shape[0], batch["idx"].shape[0], logits_t.detach().clone()))
        return original(self, logits_s, logits_t, labels, batch)

    monkeypatch.setattr(MLKDTerm, "forward", spy)
    _train(digits_save, tmp_path, capsys, "--relational", "mlkd", "--teacher_views", "2")
    assert [(rows, images) for rows, images, _ in seen] == [(64, 32), (64, 32)]  # two views of each of 32 images
    assert not torch.equal(seen[0][2][:32], seen[0][2][32:])  # the two views are distinct cached teacher outputs
