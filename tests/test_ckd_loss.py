"""CKD comparative loss: combine modes, group means, label histograms, unweighted terms and invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dataset import TupleSampler
from distiller_zoo import CKDLoss, DistillKL, LogitPairs, apply_to_pairs, ckd_group_sizes, combine, group_mean, label_histogram

B, C = 4, 5


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(C, (2, B, 3), generator=g)
    hist = torch.nn.functional.one_hot(labels, C).double().mean(dim=2)
    return {
        "s_pos": _rand(B, C, seed=seed + 1),
        "s_neg": _rand(B, C, seed=seed + 2),
        "t_pos": _rand(B, C, seed=seed + 3),
        "t_neg": _rand(B, C, seed=seed + 4),
        "y_pos": hist[0],
        "y_neg": hist[1],
    }


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a - b) ** 2).sum() / a.size)


def _kd(s: np.ndarray, t: np.ndarray, T: float) -> float:
    total = 0.0
    for i in range(s.shape[0]):
        ps = np.exp(s[i] / T) / np.exp(s[i] / T).sum()
        pt = np.exp(t[i] / T) / np.exp(t[i] / T).sum()
        total += sum(pt[c] * (math.log(pt[c]) - math.log(ps[c])) for c in range(s.shape[1]))
    return T**2 * total / s.shape[0]


def _with_kd(loss: CKDLoss, x: dict[str, torch.Tensor], lam: torch.Tensor | None = None, T: float = 4.0) -> dict:
    """CKD's terms plus KD on the combined pair (Delta_s, Delta_t), by the path a method takes (apply_to_pairs)."""
    delta_s, delta_t, delta_y = loss.combined(**x, lam=lam, teacher=True)
    return {**loss.terms_of(delta_s, delta_t, delta_y), "kd": apply_to_pairs(DistillKL(T), LogitPairs([delta_s], [delta_t]))}


def test_combine_modes_golden() -> None:
    a, b = torch.tensor([[1.0, 2.0], [3.0, -4.0]]), torch.tensor([[0.5, -1.0], [2.0, 2.0]])
    assert torch.equal(combine(a, b, "ckd"), torch.tensor([[0.5, 3.0], [1.0, -6.0]]))
    assert torch.equal(combine(a, b, "ckd_add"), torch.tensor([[0.75, 0.5], [2.5, -1.0]]))
    lam = torch.tensor(0.25)
    assert torch.allclose(combine(a, b, "ckd_mixup", lam), torch.tensor([[0.625, -0.25], [2.25, 0.5]]))
    with pytest.raises(ValueError):
        combine(a, b, "ckd_mixup")
    with pytest.raises(ValueError):
        combine(a, b, "nope")


@pytest.mark.parametrize("mode", ["ckd", "ckd_add", "ckd_mixup"])
def test_ckd_loss_golden_all_modes(mode: str) -> None:
    x = _inputs()
    lam = torch.tensor(0.3, dtype=torch.float64) if mode == "ckd_mixup" else None
    n = {k: v.numpy() for k, v in x.items()}
    if mode == "ckd":
        comb = lambda a, b: a - b  # noqa: E731
    elif mode == "ckd_add":
        comb = lambda a, b: 0.5 * a + 0.5 * b  # noqa: E731
    else:
        comb = lambda a, b: 0.3 * a + 0.7 * b  # noqa: E731
    ds, dt, dy = comb(n["s_pos"], n["s_neg"]), comb(n["t_pos"], n["t_neg"]), comb(n["y_pos"], n["y_neg"])
    out = CKDLoss(mode=mode)(**x, lam=lam)
    assert list(out) == ["cls", "rel"]  # unweighted: the method applies w_cls and w_rel
    assert out["cls"].item() == pytest.approx(_mse(ds, dy), rel=1e-12)
    assert out["rel"].item() == pytest.approx(_mse(ds, dt), rel=1e-12)
    kd = _with_kd(CKDLoss(mode=mode), x, lam)["kd"]
    assert kd.item() == pytest.approx(_kd(ds, dt, 4.0), rel=1e-10)


def test_terms_not_asked_for_are_absent() -> None:
    x = _inputs()
    assert list(CKDLoss()(**x)) == ["cls", "rel"]
    assert set(CKDLoss(terms=("rel",))(**x)) == {"rel"}
    assert set(CKDLoss(terms=("cls",))(**x)) == {"cls"}
    assert CKDLoss(terms=())(**x) == {}
    _, delta_t, delta_y = CKDLoss(terms=()).combined(**x)
    assert delta_t is None and delta_y is None and CKDLoss(terms=()).combined(**x, teacher=True)[1] is not None
    with pytest.raises(ValueError):
        CKDLoss(terms=("kd",))


def test_ckd_mixup_requires_lam_and_mode_is_validated() -> None:
    with pytest.raises(ValueError):
        CKDLoss(mode="ckd_mixup")(**_inputs())
    with pytest.raises(ValueError):
        CKDLoss(mode="difference")


def test_ckd_mode_invariant_to_common_logit_shift() -> None:
    x = _inputs(seed=10)
    shift = _rand(1, C, seed=42) * 5
    loss = CKDLoss()
    base = _with_kd(loss, x)
    shifted = _with_kd(loss, {**x, "s_pos": x["s_pos"] + shift, "s_neg": x["s_neg"] + shift})
    for k in base:
        assert shifted[k].item() == pytest.approx(base[k].item(), rel=1e-12, abs=1e-12)
    # the same shift does change the non-comparative ckd_add variant
    add = CKDLoss(mode="ckd_add")
    assert add(**{**x, "s_pos": x["s_pos"] + shift, "s_neg": x["s_neg"] + shift})["rel"].item() != pytest.approx(add(**x)["rel"].item())


def test_rel_zero_when_student_equals_teacher() -> None:
    x = _inputs()
    for mode, lam in (("ckd", None), ("ckd_add", None), ("ckd_mixup", torch.tensor(0.6))):
        out = _with_kd(CKDLoss(mode=mode), {**x, "s_pos": x["t_pos"].clone(), "s_neg": x["t_neg"].clone()}, lam=lam)
        assert out["rel"].item() == 0.0
        assert abs(out["kd"].item()) < 1e-12


def test_gradients_reach_student_not_teacher() -> None:
    x = _inputs()
    s_pos, s_neg = x["s_pos"].clone().requires_grad_(), x["s_neg"].clone().requires_grad_()
    t_pos, t_neg = x["t_pos"].clone().requires_grad_(), x["t_neg"].clone().requires_grad_()
    out = _with_kd(CKDLoss(), {"s_pos": s_pos, "s_neg": s_neg, "t_pos": t_pos, "t_neg": t_neg, "y_pos": x["y_pos"],
                               "y_neg": x["y_neg"]})
    sum(out.values()).backward()
    assert s_pos.grad is not None and s_pos.grad.abs().sum() > 0
    assert s_neg.grad is not None and s_neg.grad.abs().sum() > 0
    assert t_pos.grad is None and t_neg.grad is None


def test_group_mean_golden_logits_and_features() -> None:
    x = _rand(7, 3, seed=5)
    groups = torch.tensor([[0, 2, 4], [1, 1, 6]])
    xn = x.numpy()
    expected = np.stack([(xn[0] + xn[2] + xn[4]) / 3, (xn[1] + xn[1] + xn[6]) / 3])
    assert np.allclose(group_mean(x, groups).numpy(), expected, rtol=0, atol=1e-14)
    feats = _rand(7, 2, 2, 2, seed=6)
    got = group_mean(feats, groups)
    assert got.shape == (2, 2, 2, 2)
    assert torch.allclose(got[1], (feats[1] * 2 + feats[6]) / 3)


def test_label_histogram_golden() -> None:
    labels = torch.tensor([3, 0, 3, 1, 2])
    groups = torch.tensor([[0, 2, 4], [1, 3, 3]])
    hist = label_histogram(labels, groups, num_classes=4)
    expected = torch.tensor([[0.0, 0.0, 1 / 3, 2 / 3], [1 / 3, 2 / 3, 0.0, 0.0]])
    assert torch.allclose(hist, expected)
    assert torch.allclose(hist.sum(dim=1), torch.ones(2))


def test_group_size_one_is_pairwise_ckd() -> None:
    """With g = 1 the group mean is the image's own logits and the histogram is the one-hot label."""
    logits, labels = _rand(6, C, seed=8), torch.tensor([0, 1, 2, 3, 4, 0])
    pos, neg = torch.tensor([[0], [2]]), torch.tensor([[1], [5]])
    assert torch.equal(group_mean(logits, pos), logits[[0, 2]])
    assert torch.equal(label_histogram(labels, neg, C), torch.nn.functional.one_hot(labels[[1, 5]], C).to(torch.get_default_dtype()))


def test_ckd_group_sizes_split_a_tuple_into_positives_and_negatives() -> None:
    assert ckd_group_sizes(2) == (1, 1)
    assert ckd_group_sizes(3) == (2, 1)
    assert ckd_group_sizes(4) == (2, 2)
    with pytest.raises(ValueError, match="at least 2 images"):
        ckd_group_sizes(1)


def test_group_targets_of_sampled_tuples() -> None:
    """The targets of CKD groups drawn by the tuple sampler: label histograms and the mean cached teacher logits
    (float32), and the mean of half-precision cached feature maps in float32."""
    n_images, views, num_classes = 12, 2, 4
    labels = (torch.arange(n_images) % num_classes).repeat(views)
    logits = torch.randn((n_images * views, num_classes), generator=torch.Generator().manual_seed(0))
    sampler = TupleSampler(torch.arange(n_images).repeat(views), (2, 1), max_samples=50, batch_size=16, seed=0, device="cpu")
    groups = sampler.next_batch()["groups"]
    hist, mean = label_histogram(labels, groups, num_classes), group_mean(logits, groups)
    assert hist.shape == (16, 4) and mean.shape == (16, 4) and hist.dtype == torch.float32
    torch.testing.assert_close(hist.sum(dim=1), torch.ones(16))
    for b in range(16):
        expected = torch.zeros(4)
        for i in groups[b].tolist():
            expected[labels[i]] += 1 / 3
        torch.testing.assert_close(hist[b], expected)
        torch.testing.assert_close(mean[b], logits[groups[b]].mean(dim=0))
    feats = torch.randn(n_images * views, 5, 2, 2).half()
    fm = group_mean(feats, groups[:, :2])
    assert fm.dtype == torch.float32 and fm.shape == (16, 5, 2, 2)
    torch.testing.assert_close(fm[3], feats[groups[3, :2]].float().mean(dim=0))
