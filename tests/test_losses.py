"""Golden values and properties for the baseline losses: KD, FitNets, CC, VID, RKD, DIST.

Every golden value is recomputed here from the published formula with numpy and plain loops,
independently of the implementation under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distiller_zoo import DIST, Correlation, DistillKL, HintLoss, RKDLoss, VIDLoss
from models.util import LinearEmbed


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _softmax_np(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _huber_mean(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.where(d < 1.0, 0.5 * d**2, d - 0.5).mean())


def _pearson(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> float:
    da, db = a - a.mean(), b - b.mean()
    num = sum(x * y for x, y in zip(da, db))
    return num / (math.sqrt(sum(x * x for x in da)) * math.sqrt(sum(y * y for y in db)) + eps)


# ----------------------------------------------------------------------------- KD


def test_distill_kl_golden_t2_and_batchmean() -> None:
    B, C, T = 4, 7, 4.0
    y_s, y_t = _rand(B, C, seed=1) * 3, _rand(B, C, seed=2) * 3
    p_s, p_t = _softmax_np(y_s.numpy() / T), _softmax_np(y_t.numpy() / T)
    per_row = [sum(p_t[i, c] * (math.log(p_t[i, c]) - math.log(p_s[i, c])) for c in range(C)) for i in range(B)]
    expected = T**2 * sum(per_row) / B
    got = DistillKL(T)(y_s, y_t).item()
    assert got == pytest.approx(expected, rel=1e-10)
    elementwise_mean = T**2 * sum(per_row) / (B * C)
    assert got == pytest.approx(C * elementwise_mean, rel=1e-10)
    assert abs(got - elementwise_mean) > 1e-3


def test_distill_kl_temperature_factor() -> None:
    y_s, y_t = _rand(3, 5, seed=3), _rand(3, 5, seed=4)
    p_s, p_t = _softmax_np(y_s.numpy() / 2.0), _softmax_np(y_t.numpy() / 2.0)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1).mean()
    assert DistillKL(2.0)(y_s, y_t).item() == pytest.approx(4.0 * kl, rel=1e-10)


# ----------------------------------------------------------------------------- FitNets


def test_hint_loss_golden() -> None:
    f_s, f_t = _rand(2, 3, 4, 4, seed=5), _rand(2, 3, 4, 4, seed=6)
    expected = float(((f_s.numpy() - f_t.numpy()) ** 2).mean())
    assert HintLoss()(f_s, f_t).item() == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------- CC


def test_correlation_golden() -> None:
    B, d = 5, 6
    e_s, e_t = _rand(B, d, seed=7), _rand(B, d, seed=8)
    delta = np.abs(e_s.numpy() - e_t.numpy())
    rows = [sum(delta[i, j] * delta[i + 1, j] for j in range(d)) for i in range(B - 1)]
    assert Correlation()(e_s, e_t).item() == pytest.approx(sum(rows) / (B - 1), rel=1e-12)


def test_correlation_trains_both_embedding_heads() -> None:
    torch.manual_seed(0)
    embed_s, embed_t = LinearEmbed(8, 4), LinearEmbed(10, 4)
    f_s, f_t = torch.randn(6, 8, requires_grad=True), torch.randn(6, 2, 5)
    Correlation()(embed_s(f_s), embed_t(f_t)).backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert embed_s.linear.weight.grad is not None and embed_t.linear.weight.grad is not None
    assert embed_t.linear.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- VID


def test_vid_init_variance_and_golden_nll() -> None:
    loss_fn = VIDLoss(3, 5, 4, init_pred_var=5.0, eps=1e-5).double()
    var = F.softplus(loss_fn.log_scale) + loss_fn.eps
    assert torch.allclose(var, torch.full_like(var, 5.0), rtol=1e-6, atol=0)  # log_scale is stored in float32
    torch.nn.init.zeros_(loss_fn.regressor[-1].weight)  # prediction mean 0, so the NLL is closed form
    x, t = _rand(2, 3, 4, 4, seed=9), _rand(2, 4, 4, 4, seed=10)
    expected = float((0.5 * (t.numpy() ** 2 / 5.0 + math.log(5.0))).mean())
    assert loss_fn(x, t).item() == pytest.approx(expected, rel=1e-6)


def test_vid_pools_the_larger_feature_map() -> None:
    loss_fn = VIDLoss(3, 5, 4).double()
    torch.nn.init.zeros_(loss_fn.regressor[-1].weight)
    x, t = _rand(2, 3, 2, 2, seed=11), _rand(2, 4, 4, 4, seed=12)
    tn = t.numpy()
    pooled = np.zeros((2, 4, 2, 2))
    for a in range(2):
        for b in range(2):
            pooled[:, :, a, b] = tn[:, :, 2 * a : 2 * a + 2, 2 * b : 2 * b + 2].mean(axis=(2, 3))
    var = 5.0
    expected = float((0.5 * (pooled**2 / var + math.log(var))).mean())
    assert loss_fn(x, t).item() == pytest.approx(expected, rel=1e-5)

    loss_fn = VIDLoss(3, 5, 4).double()
    x_big, t_small = _rand(2, 3, 8, 8, seed=13), _rand(2, 4, 4, 4, seed=14)
    assert loss_fn(x_big, t_small).item() == pytest.approx(loss_fn(F.avg_pool2d(x_big, 2), t_small).item(), rel=1e-12)


def test_vid_gradients_reach_regressor_and_variance_not_teacher() -> None:
    torch.manual_seed(0)
    loss_fn = VIDLoss(3, 5, 4)
    x, t = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 4, 4, 4, requires_grad=True)
    loss_fn(x, t).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss_fn.parameters())
    assert t.grad is None


# ----------------------------------------------------------------------------- RKD


def _rkd_terms_by_hand(s: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    B = s.shape[0]

    def norm_dist(x: np.ndarray) -> np.ndarray:
        d = np.zeros((B, B))
        for i in range(B):
            for j in range(B):
                if i != j:
                    d[i, j] = math.sqrt(((x[i] - x[j]) ** 2).sum())
        return d / d[d > 0].mean()

    def angles(x: np.ndarray) -> np.ndarray:
        a = np.zeros((B, B, B))
        for i in range(B):
            for j in range(B):
                for k in range(B):
                    if j == i or k == i:
                        continue
                    u, v = x[j] - x[i], x[k] - x[i]
                    a[i, j, k] = (u @ v) / (np.linalg.norm(u) * np.linalg.norm(v))
        return a

    return _huber_mean(norm_dist(s), norm_dist(t)), _huber_mean(angles(s), angles(t))


def test_rkd_distance_and_angle_terms_golden() -> None:
    s, t = _rand(5, 3, seed=15) * 2, _rand(5, 4, seed=16)
    dist, angle = _rkd_terms_by_hand(s.numpy(), t.numpy())
    assert RKDLoss(w_d=1, w_a=0)(s, t).item() == pytest.approx(dist, rel=1e-9)
    assert RKDLoss(w_d=0, w_a=1)(s, t).item() == pytest.approx(angle, rel=1e-9)
    assert RKDLoss()(s, t).item() == pytest.approx(25 * dist + 50 * angle, rel=1e-9)


def test_rkd_flattens_feature_maps() -> None:
    s, t = _rand(4, 2, 3, 3, seed=17), _rand(4, 5, 2, 2, seed=18)
    assert RKDLoss()(s, t).item() == pytest.approx(RKDLoss()(s.flatten(1), t.flatten(1)).item(), rel=1e-12)


# ----------------------------------------------------------------------------- DIST


def test_dist_golden_pearson_loops() -> None:
    B, C, tau = 5, 6, 4.0
    z_s, z_t = _rand(B, C, seed=19) * 4, _rand(B, C, seed=20) * 4
    p_s, p_t = _softmax_np(z_s.numpy() / tau), _softmax_np(z_t.numpy() / tau)
    inter = 1 - sum(_pearson(p_s[i], p_t[i]) for i in range(B)) / B
    intra = 1 - sum(_pearson(p_s[:, c], p_t[:, c]) for c in range(C)) / C
    assert DIST()(z_s, z_t).item() == pytest.approx(tau**2 * (inter + intra), rel=1e-9)
    assert DIST(beta=2.0, gamma=0.5, tau=1.0)(z_s, z_t).item() == pytest.approx(
        2.0 * (1 - np.mean([_pearson(a, b) for a, b in zip(_softmax_np(z_s.numpy()), _softmax_np(z_t.numpy()))]))
        + 0.5 * (1 - np.mean([_pearson(a, b) for a, b in zip(_softmax_np(z_s.numpy()).T, _softmax_np(z_t.numpy()).T)])),
        rel=1e-9,
    )
    # sanity: the hand-written Pearson agrees with numpy's
    assert _pearson(p_s[0], p_t[0]) == pytest.approx(np.corrcoef(p_s[0], p_t[0])[0, 1], rel=1e-6)


# ----------------------------------------------------------------------------- shared properties


FEATURE_LOSSES = [
    ("kd", lambda: DistillKL(4.0), (6, 10)),
    ("hint", HintLoss, (6, 4, 3, 3)),
    ("rkd", RKDLoss, (6, 8)),
    ("dist", DIST, (6, 10)),
]


@pytest.mark.parametrize(("name", "make", "shape"), FEATURE_LOSSES[:3], ids=[c[0] for c in FEATURE_LOSSES[:3]])
def test_zero_loss_when_student_equals_teacher(name: str, make, shape: tuple[int, ...]) -> None:
    x = _rand(*shape, seed=21)
    value = make()(x.clone(), x.clone()).item()
    assert abs(value) < 1e-9, f"{name}: {value}"


def test_dist_minimal_when_student_equals_teacher() -> None:
    """With p_s == p_t only the eps = 1e-8 in the Pearson denominator keeps the loss above zero."""
    z = _rand(6, 10, seed=21)
    p = _softmax_np(z.numpy() / 4.0)
    residual = 16.0 * ((1 - np.mean([_pearson(r, r) for r in p])) + (1 - np.mean([_pearson(c, c) for c in p.T])))
    value = DIST()(z, z.clone()).item()
    assert value == pytest.approx(residual, rel=1e-6)
    assert 0 <= value < 1e-3
    assert DIST()(z, _rand(6, 10, seed=99)).item() > 100 * value


@pytest.mark.parametrize(("name", "make", "shape"), FEATURE_LOSSES, ids=[c[0] for c in FEATURE_LOSSES])
def test_gradients_reach_student_never_teacher(name: str, make, shape: tuple[int, ...]) -> None:
    s = _rand(*shape, seed=22).requires_grad_()
    t = _rand(*shape, seed=23).requires_grad_()
    loss = make()(s, t)
    assert loss.dim() == 0
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0, name
    assert t.grad is None or t.grad.abs().sum() == 0, name
