"""Mixup / mixup3 / CutMix helpers and MixupLoss: seeded sampling, mixing, box area and label weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distiller_zoo import (
    DistillKL,
    LogitPairs,
    MixupLoss,
    apply_cutmix,
    apply_to_pairs,
    cutmix_box,
    mix_images,
    sample_gamma,
    sample_mixup_weights,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)


@pytest.mark.parametrize("k", [2, 3])
def test_weights_are_a_reproducible_simplex_point(k: int) -> None:
    w = sample_mixup_weights(k, _gen(0))
    assert w.shape == (k,) and w.device.type == "cpu"
    assert (w > 0).all() and w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(w, sample_mixup_weights(k, _gen(0)))
    assert not torch.equal(w, sample_mixup_weights(k, _gen(1)))


def test_sampling_resumes_from_generator_state() -> None:
    g = _gen(3)
    sample_mixup_weights(2, g)
    state = g.get_state()
    nxt = [sample_mixup_weights(3, g, alpha=0.4) for _ in range(3)]
    g2 = torch.Generator()
    g2.set_state(state)
    assert all(torch.equal(a, sample_mixup_weights(3, g2, alpha=0.4)) for a in nxt)


def test_beta_and_dirichlet_moments() -> None:
    g, n = _gen(7), 3000
    lam = np.array([sample_mixup_weights(2, g)[0].item() for _ in range(n)])  # Beta(1, 1) = U(0, 1)
    assert lam.mean() == pytest.approx(0.5, abs=0.03) and lam.var() == pytest.approx(1 / 12, abs=0.01)
    lam = np.array([sample_mixup_weights(2, g, alpha=0.2)[0].item() for _ in range(n)])  # var 1 / (4 (2a + 1))
    assert lam.mean() == pytest.approx(0.5, abs=0.03) and lam.var() == pytest.approx(1 / (4 * 1.4), abs=0.015)
    w = np.stack([sample_mixup_weights(3, g).numpy() for _ in range(n)])  # Dirichlet(1,1,1): mean 1/3, var 1/18
    assert np.allclose(w.mean(axis=0), 1 / 3, atol=0.03) and np.allclose(w.var(axis=0), 1 / 18, atol=0.01)
    gam = np.array([sample_gamma(2.5, g) for _ in range(n)])
    assert gam.mean() == pytest.approx(2.5, abs=0.15) and gam.var() == pytest.approx(2.5, abs=0.35)


def test_mix_images_golden() -> None:
    a, b, c = _rand(2, 3, 4, 4, seed=1), _rand(2, 3, 4, 4, seed=2), _rand(2, 3, 4, 4, seed=3)
    w = torch.tensor([0.2, 0.5, 0.3])
    expected = 0.2 * a.numpy() + 0.5 * b.numpy() + 0.3 * c.numpy()
    assert np.allclose(mix_images([a, b, c], w).numpy(), expected, atol=1e-7)
    assert torch.allclose(mix_images([a, b], torch.tensor([0.7, 0.3])), 0.7 * a + 0.3 * b, atol=1e-7)
    with pytest.raises(ValueError):
        mix_images([a, b], w)


def test_cutmix_box_area_matches_lambda() -> None:
    H = W = 32
    unclipped = 0
    for seed in range(40):
        lam_in = 0.75  # box side = 32 * sqrt(0.25) = 16, so an unclipped box covers exactly 1/4 of the image
        y0, y1, x0, x1, lam = cutmix_box(H, W, lam_in, _gen(seed))
        assert 0 <= y0 <= y1 <= H and 0 <= x0 <= x1 <= W
        area = (y1 - y0) * (x1 - x0)
        assert lam == pytest.approx(1 - area / (H * W), abs=1e-12)
        assert lam >= lam_in - 1e-12  # clipping can only shrink the box
        if y0 > 0 and x0 > 0 and y1 < H and x1 < W:
            unclipped += 1
            assert area == (1 - lam_in) * H * W and lam == pytest.approx(lam_in)
    assert unclipped > 0
    assert cutmix_box(H, W, 0.3, _gen(5)) == cutmix_box(H, W, 0.3, _gen(5))


def test_apply_cutmix_pastes_the_box_only() -> None:
    x1, x2 = torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
    box = cutmix_box(8, 8, 0.6, _gen(11))
    mixed = apply_cutmix(x1, x2, box)
    y0, y1, x0, x1_, lam = box
    assert mixed[..., y0:y1, x0:x1_].eq(1).all()
    assert mixed.mean().item() == pytest.approx(1 - lam)  # fraction of pixels from x2 is 1 - lam
    assert x1.eq(0).all()  # inputs untouched


def _ce(s: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean([-(s[i, y[i]] - math.log(np.exp(s[i]).sum())) for i in range(len(y))]))


def _soft_ce(s: np.ndarray, t: np.ndarray) -> float:
    total = 0.0
    for i in range(s.shape[0]):
        p = np.exp(t[i]) / np.exp(t[i]).sum()
        log_q = s[i] - math.log(np.exp(s[i]).sum())
        total += -sum(p[c] * log_q[c] for c in range(s.shape[1]))
    return total / s.shape[0]


@pytest.mark.parametrize("k", [2, 3])
def test_mixup_loss_golden(k: int) -> None:
    B, C = 4, 6
    s = _rand(B, C, seed=20)
    ts = [_rand(B, C, seed=21 + i) * 2 for i in range(k)]
    ys = [torch.randint(C, (B,), generator=_gen(30 + i)) for i in range(k)]
    w = sample_mixup_weights(k, _gen(40)).double()
    wn = w.numpy()
    out = MixupLoss(loss_fn=0, T=4.0)(s, ts, ys, w)
    assert list(out) == ["cls", "rel"]  # unweighted: the method applies w_cls and w_rel
    assert out["cls"].item() == pytest.approx(sum(wn[i] * _ce(s.numpy(), ys[i].numpy()) for i in range(k)), rel=1e-10)
    assert out["rel"].item() == pytest.approx(sum(wn[i] * _soft_ce(s.numpy(), ts[i].numpy()) for i in range(k)), rel=1e-10)
    kd = sum(wn[i] * DistillKL(4.0)(s, ts[i]).item() for i in range(k))
    # KD on the per-source pairs with their mixing weights, by the path a method takes
    assert apply_to_pairs(DistillKL(4.0), LogitPairs([s] * k, ts, w)).item() == pytest.approx(kd, rel=1e-10)
    rel_kl = MixupLoss(terms=("rel",), loss_fn=1, T=4.0)(s, ts, ys, w)
    assert set(rel_kl) == {"rel"} and rel_kl["rel"].item() == pytest.approx(kd, rel=1e-10)


def test_mixup_loss_label_weights_sum_to_one() -> None:
    s, y = _rand(5, 4, seed=50), torch.tensor([0, 1, 2, 3, 0])
    w = sample_mixup_weights(3, _gen(51)).double()
    out = MixupLoss(terms=("cls",))(s, [], [y, y, y], w)
    assert set(out) == {"cls"}
    assert out["cls"].item() == pytest.approx(torch.nn.functional.cross_entropy(s, y).item(), rel=1e-6)


def test_mixup_loss_gradients_reach_student_not_teacher() -> None:
    s = _rand(4, 6, seed=60).requires_grad_()
    ts = [_rand(4, 6, seed=61 + i).requires_grad_() for i in range(2)]
    ys = [torch.tensor([0, 1, 2, 3]), torch.tensor([5, 4, 3, 2])]
    for loss_fn in (0, 1):
        w = torch.tensor([0.4, 0.6], dtype=torch.float64)
        out = MixupLoss(loss_fn=loss_fn)(s, ts, ys, w)
        out["kd"] = apply_to_pairs(DistillKL(4.0), LogitPairs([s, s], ts, w))
        sum(out.values()).backward()
        assert s.grad is not None and s.grad.abs().sum() > 0
        assert all(t.grad is None for t in ts)
    with pytest.raises(ValueError):
        MixupLoss(loss_fn=2)
    with pytest.raises(ValueError):
        MixupLoss(terms=("kd",))
