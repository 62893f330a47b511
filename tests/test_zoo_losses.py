"""Golden values and properties for the rest of the RepDistiller zoo (AT, SP, PKT, AB, FT, FSP, NST, KD-SVD)
and mdistiller's DKD.

Every golden value is recomputed here from the published formula (written in each test's docstring) with
numpy and plain Python loops in float64, independently of the implementation under test.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from distiller_zoo import (
    FSP,
    KDSVD,
    PKT,
    ABLoss,
    Attention,
    DistillKL,
    FactorTransfer,
    NSTLoss,
    Similarity,
)
from distiller_zoo.dkd import DKD, dkd_loss
from models.util import Connector, ConvReg, Paraphraser, Translator

REL = 1e-8  # float64 everywhere; the brief's bar is 1e-5


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(*shape, dtype=dtype)


def _pool_np(f: np.ndarray, h: int, w: int) -> np.ndarray:
    """Adaptive average pooling for sizes that divide evenly: the mean of each block."""
    n, c, big_h, big_w = f.shape
    out = np.zeros((n, c, h, w))
    bh, bw = big_h // h, big_w // w
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = f[:, :, i * bh:(i + 1) * bh, j * bw:(j + 1) * bw].mean(axis=(2, 3))
    return out


def _match_np(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.shape[2] > b.shape[2]:
        a = _pool_np(a, b.shape[2], b.shape[3])
    elif a.shape[2] < b.shape[2]:
        b = _pool_np(b, a.shape[2], a.shape[3])
    return a, b


def _values(losses: list[torch.Tensor]) -> list[float]:
    return [float(x) for x in losses]


# ----------------------------------------------------------------------------- signatures


def _params(fn: Callable) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values() if p.name != "self"]


E = inspect.Parameter.empty


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (Attention.__init__, [("p", 2)]),
        (Attention.forward, [("g_s", E), ("g_t", E)]),
        (Similarity.forward, [("g_s", E), ("g_t", E)]),
        (PKT.forward, [("f_s", E), ("f_t", E)]),
        (ABLoss.__init__, [("feat_num", E), ("margin", 1.0)]),
        (ABLoss.forward, [("g_s", E), ("g_t", E)]),
        (FactorTransfer.__init__, [("p1", 2), ("p2", 1)]),
        (FactorTransfer.forward, [("f_s", E), ("f_t", E)]),
        (FSP.__init__, [("s_shapes", E), ("t_shapes", E)]),
        (FSP.forward, [("g_s", E), ("g_t", E)]),
        (NSTLoss.forward, [("g_s", E), ("g_t", E)]),
        (KDSVD.__init__, [("k", 1)]),
        (KDSVD.forward, [("g_s", E), ("g_t", E)]),
        (Paraphraser.__init__, [("t_shape", E), ("k", 0.5), ("use_bn", False)]),
        (Paraphraser.forward, [("f_s", E), ("is_factor", False)]),
        (Translator.__init__, [("s_shape", E), ("t_shape", E), ("k", 0.5), ("use_bn", True)]),
        (Translator.forward, [("f_s", E)]),
        (Connector.__init__, [("s_shapes", E), ("t_shapes", E)]),
        (Connector.forward, [("g_s", E)]),
        (dkd_loss, [("logits_student", E), ("logits_teacher", E), ("target", E), ("alpha", E), ("beta", E), ("temperature", E)]),
        # logit_stand: the logit-standardization fork of mdistiller's DKD (off by default)
        (DKD.__init__, [("alpha", 1.0), ("beta", 8.0), ("temperature", 4.0), ("warmup", 20), ("logit_stand", False)]),
        (DKD.forward, [("logits_student", E), ("logits_teacher", E), ("target", E), ("epoch", E)]),
    ],
)
def test_signatures_match_repdistiller_and_mdistiller(fn: Callable, expected: list[tuple[str, object]]) -> None:
    assert _params(fn) == expected


# ----------------------------------------------------------------------------- AT


def _attention_np(f: np.ndarray, p: int) -> np.ndarray:
    out = []
    for sample in f:
        a = (sample**p).mean(axis=0).ravel()
        out.append(a / max(math.sqrt(sum(x * x for x in a)), 1e-12))
    return np.array(out)


def test_attention_golden_with_pooling() -> None:
    """Q(f) = vec(mean_c f_c^2) / ||vec(mean_c f_c^2)||_2;  L = mean_{n,hw} (Q(f_s) - Q(f_t))^2 per layer,
    the larger map adaptive-average-pooled to the smaller one."""
    g_s = [_rand(3, 4, 8, 8, seed=1), _rand(3, 6, 4, 4, seed=2), _rand(3, 5, 2, 2, seed=3)]
    g_t = [_rand(3, 7, 4, 4, seed=4), _rand(3, 3, 8, 8, seed=5), _rand(3, 9, 2, 2, seed=6)]
    expected = []
    for f_s, f_t in zip(g_s, g_t):
        a, b = _match_np(f_s.numpy(), f_t.numpy())
        d = _attention_np(a, 2) - _attention_np(b, 2)
        expected.append(float((d**2).sum() / d.size))
    got = Attention()(g_s, g_t)
    assert isinstance(got, list) and len(got) == 3 and all(x.dim() == 0 for x in got)
    assert _values(got) == pytest.approx(expected, rel=REL)


def test_attention_p_changes_the_map() -> None:
    g_s, g_t = [_rand(2, 4, 4, 4, seed=7)], [_rand(2, 4, 4, 4, seed=8)]
    d = _attention_np(g_s[0].numpy(), 4) - _attention_np(g_t[0].numpy(), 4)
    assert float(Attention(p=4)(g_s, g_t)[0]) == pytest.approx(float((d**2).mean()), rel=REL)


# ----------------------------------------------------------------------------- SP


def test_similarity_golden() -> None:
    """G = Q Q^T (Q: flattened batch), rows L2-normalised;  L = ||G~_t - G~_s||_F^2 / b^2 per layer."""
    b = 5
    g_s = [_rand(b, 3, 4, 4, seed=10), _rand(b, 12, seed=11)]
    g_t = [_rand(b, 6, 2, 2, seed=12), _rand(b, 20, seed=13)]
    expected = []
    for f_s, f_t in zip(g_s, g_t):
        mats = []
        for f in (f_s.reshape(b, -1).numpy(), f_t.reshape(b, -1).numpy()):
            g = [[float(np.dot(f[i], f[j])) for j in range(b)] for i in range(b)]
            mats.append([[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in g])
        expected.append(sum((mats[1][i][j] - mats[0][i][j]) ** 2 for i in range(b) for j in range(b)) / b**2)
    got = Similarity()(g_s, g_t)
    assert isinstance(got, list) and len(got) == 2 and all(x.dim() == 0 for x in got)
    assert _values(got) == pytest.approx(expected, rel=REL)


# ----------------------------------------------------------------------------- PKT


def _pkt_conditionals(f: np.ndarray, eps: float) -> list[list[float]]:
    b = f.shape[0]
    x = [row / (math.sqrt(float((row**2).sum())) + eps) for row in f]
    k = [[(float(np.dot(x[i], x[j])) + 1.0) / 2.0 for j in range(b)] for i in range(b)]
    return [[k[i][j] / sum(k[i]) for j in range(b)] for i in range(b)]


def test_pkt_golden() -> None:
    """K_ij = (cos(x_i, x_j) + 1) / 2,  p_{j|i} = K_ij / sum_k K_ik;
    L = 1/b^2 sum_ij p^t_{j|i} log((p^t_{j|i} + eps) / (p^s_{j|i} + eps)), eps = 1e-7."""
    b, eps = 6, 1e-7
    f_s, f_t = _rand(b, 10, seed=20), _rand(b, 16, seed=21)
    p_s, p_t = _pkt_conditionals(f_s.numpy(), eps), _pkt_conditionals(f_t.numpy(), eps)
    expected = sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps)) for i in range(b) for j in range(b)) / b**2
    got = PKT()(f_s, f_t)
    assert got.dim() == 0
    assert float(got) == pytest.approx(expected, rel=REL)


def test_pkt_is_zero_for_identical_and_scale_invariant() -> None:
    f = _rand(5, 8, seed=22)
    assert float(PKT()(f, f.clone())) == pytest.approx(0.0, abs=1e-12)
    assert float(PKT()(3.0 * f, _rand(5, 8, seed=23))) == pytest.approx(float(PKT()(f, _rand(5, 8, seed=23))), rel=1e-6)


# ----------------------------------------------------------------------------- AB


def test_ab_golden_weights_margin_and_scale() -> None:
    """l(s, t) = sum (s + m)^2 [s > -m, t <= 0] + (s - m)^2 [s <= m, t > 0];
    layer i of n gets 2^(i - n + 1) * l / batch * 3 / 1000."""
    bsz, margin = 4, 0.7
    g_s = [_rand(bsz, 3, 4, 4, seed=30) * 1.5, _rand(bsz, 5, 2, 2, seed=31) * 1.5, _rand(bsz, 6, 2, 2, seed=32) * 1.5]
    g_t = [_rand(bsz, 3, 4, 4, seed=33), _rand(bsz, 5, 2, 2, seed=34), _rand(bsz, 6, 2, 2, seed=35)]
    n = len(g_s)
    expected = []
    for i, (f_s, f_t) in enumerate(zip(g_s, g_t)):
        total = 0.0
        for s, t in zip(f_s.numpy().ravel(), f_t.numpy().ravel()):
            if s > -margin and t <= 0:
                total += (s + margin) ** 2
            if s <= margin and t > 0:
                total += (s - margin) ** 2
        expected.append(2.0 ** (i - n + 1) * total / bsz * 3 / 1000)
    got = ABLoss(n, margin=margin)(g_s, g_t)
    assert isinstance(got, list) and len(got) == n and all(x.dim() == 0 for x in got)
    assert _values(got) == pytest.approx(expected, rel=REL)


def test_ab_zero_when_student_is_past_the_margin() -> None:
    t = _rand(2, 3, 4, 4, seed=36)
    s = torch.where(t > 0, 2.0, -2.0).to(t.dtype)  # beyond margin 1 on the teacher's side everywhere
    assert _values(ABLoss(1)([s], [t])) == [0.0]


def test_ab_rejects_wrong_layer_count_and_shapes() -> None:
    with pytest.raises(ValueError, match="feat_num"):
        ABLoss(2)([_rand(2, 3, 4, 4)], [_rand(2, 3, 4, 4)])
    with pytest.raises(ValueError, match="connector"):
        ABLoss(1)([_rand(2, 3, 4, 4)], [_rand(2, 5, 4, 4)])


# ----------------------------------------------------------------------------- FT


@pytest.mark.parametrize("p2", [1, 2])
def test_factor_transfer_golden(p2: int) -> None:
    """phi(F) = vec(mean_c F_c^2) / ||.||_2;  L = mean_{n,hw} |phi(F_s) - phi(F_t)|^p2, larger factor pooled."""
    f_s, f_t = _rand(3, 4, 8, 8, seed=40), _rand(3, 6, 4, 4, seed=41)
    a, b = _match_np(f_s.numpy(), f_t.numpy())
    d = _attention_np(a, 2) - _attention_np(b, 2)
    expected = float((np.abs(d) ** p2).sum() / d.size)
    got = FactorTransfer(p2=p2)(f_s, f_t)
    assert got.dim() == 0
    assert float(got) == pytest.approx(expected, rel=REL)


def test_paraphraser_translator_shapes() -> None:
    t_shape, s_shape = (2, 8, 4, 4), (2, 6, 4, 4)
    para, trans = Paraphraser(t_shape), Translator(s_shape, t_shape)
    f_t, f_s = torch.randn(t_shape), torch.randn(s_shape)
    factor, rec = para(f_t)
    assert factor.shape == (2, 4, 4, 4) and rec.shape == t_shape
    assert torch.equal(para(f_t, is_factor=True), factor)
    assert trans(f_s).shape == factor.shape
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in para.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trans.modules())
    loss = FactorTransfer()(trans(f_s), para(f_t, is_factor=True))
    loss.backward()
    assert all(p.grad is not None for p in trans.parameters())
    assert all(p.grad is None for p in para.parameters())  # the teacher factor is a target


def test_connector_identity_or_regressor() -> None:
    s_shapes, t_shapes = [(2, 4, 8, 8), (2, 6, 4, 4)], [(2, 4, 8, 8), (2, 8, 4, 4)]
    conn = Connector(s_shapes, t_shapes)
    assert isinstance(conn.connectors[0], torch.nn.Sequential) and len(conn.connectors[0]) == 0
    assert isinstance(conn.connectors[1], ConvReg) and not conn.connectors[1].use_relu
    x = [torch.randn(s) for s in s_shapes]
    out = conn(x)
    assert out[0] is x[0] and out[1].shape == t_shapes[1]


# ----------------------------------------------------------------------------- FSP


def _fsp_np(bottom: np.ndarray, top: np.ndarray) -> np.ndarray:
    bottom, top = _match_np(bottom, top)
    n, c1, h, w = bottom.shape
    c2 = top.shape[1]
    g = np.zeros((n, c2, c1))
    for k in range(n):
        for j in range(c2):
            for i in range(c1):
                g[k, j, i] = sum(top[k, j, y, x] * bottom[k, i, y, x] for y in range(h) for x in range(w)) / (h * w)
    return g


def test_fsp_golden_consecutive_layers() -> None:
    """G[n, j, i] = 1/(HW) sum_hw F2[n, j, h, w] F1[n, i, h, w] (larger map pooled);  L = mean (G_s - G_t)^2
    for each consecutive pair, so len(g) - 1 losses."""
    shapes = [(2, 3, 8, 8), (2, 4, 4, 4), (2, 5, 4, 4)]
    g_s = [_rand(*s, seed=50 + i) for i, s in enumerate(shapes)]
    g_t = [_rand(*s, seed=60 + i) for i, s in enumerate(shapes)]
    expected = []
    for i in range(len(shapes) - 1):
        d = _fsp_np(g_s[i].numpy(), g_s[i + 1].numpy()) - _fsp_np(g_t[i].numpy(), g_t[i + 1].numpy())
        expected.append(float((d**2).sum() / d.size))
    got = FSP(shapes, shapes)(g_s, g_t)
    assert isinstance(got, list) and len(got) == 2 and all(x.dim() == 0 for x in got)
    assert _values(got) == pytest.approx(expected, rel=REL)


def test_fsp_rejects_channel_mismatch() -> None:
    with pytest.raises(ValueError, match="channel"):
        FSP([(2, 3, 8, 8), (2, 4, 4, 4)], [(2, 3, 8, 8), (2, 6, 4, 4)])
    with pytest.raises(ValueError, match="as many"):
        FSP([(2, 3, 8, 8)], [(2, 3, 8, 8), (2, 6, 4, 4)])


# ----------------------------------------------------------------------------- NST


def _kernel_mean(x: list, y: list) -> float:
    """Mean over samples k and channel pairs (u in x[k], v in y[k]) of (u . v)^2."""
    vals = [float(np.dot(u, v)) ** 2 for xk, yk in zip(x, y) for u in xk for v in yk]
    return sum(vals) / len(vals)


def test_nst_golden() -> None:
    """Channels flattened over space and L2-normalised;  k(x, y) = (x . y)^2;
    L = mean k(t, t') + mean k(s, s') - 2 mean k(s, t), means over the batch and all channel pairs."""
    g_s = [_rand(2, 3, 8, 8, seed=70), _rand(2, 4, 2, 2, seed=71)]
    g_t = [_rand(2, 5, 4, 4, seed=72), _rand(2, 6, 2, 2, seed=73)]
    expected = []
    for f_s, f_t in zip(g_s, g_t):
        a, b = _match_np(f_s.numpy(), f_t.numpy())
        n = a.shape[0]
        s = [[v / np.linalg.norm(v) for v in a[k].reshape(a.shape[1], -1)] for k in range(n)]
        t = [[v / np.linalg.norm(v) for v in b[k].reshape(b.shape[1], -1)] for k in range(n)]

        expected.append(_kernel_mean(t, t) + _kernel_mean(s, s) - 2 * _kernel_mean(s, t))
    got = NSTLoss()(g_s, g_t)
    assert isinstance(got, list) and len(got) == 2 and all(x.dim() == 0 for x in got)
    assert _values(got) == pytest.approx(expected, rel=REL)


# ----------------------------------------------------------------------------- KD-SVD


def _svd_vectors_np(f: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: right singular vectors of the (HW, C) matrix (largest-|entry| made positive), top n,
    and the top-n singular values L2-normalised."""
    vs, ss = [], []
    for sample in f:
        x = sample.reshape(sample.shape[0], -1).T
        _, s, vh = np.linalg.svd(x, full_matrices=False)
        v = vh.T.copy()
        for m in range(v.shape[1]):
            if v[np.argmax(np.abs(v[:, m])), m] < 0:
                v[:, m] = -v[:, m]
        v = v[:, :n] / np.linalg.norm(v[:, :n], axis=0)
        vs.append(v)
        ss.append(s[:n] / np.linalg.norm(s[:n]))
    return np.array(vs), np.array(ss)


def test_kdsvd_golden() -> None:
    """Teacher: top k right singular vectors V_t of each (HW, C) sample matrix; student: top k + 3, each teacher
    vector matched by the student vector of largest |cos| times sign(cos); both scaled by the normalised top-k
    teacher singular values.  R[n, i, j, m] = exp(-(v_l[n, i, m] - v_{l-1}[n, j, m])^2 / 8);
    L_l = sum (R_s - R_t)^2 / N for l >= 1."""
    k = 2
    shapes = [(2, 5, 4, 4), (2, 7, 4, 4), (2, 6, 2, 2)]
    g_s = [_rand(*s, seed=80 + i) for i, s in enumerate(shapes)]
    g_t = [_rand(*s, seed=90 + i) for i, s in enumerate(shapes)]
    aligned = []
    for f_s, f_t in zip(g_s, g_t):
        v_t, s_t = _svd_vectors_np(f_t.numpy(), k)
        v_s, _ = _svd_vectors_np(f_s.numpy(), k + 3)
        v_s_aligned = np.zeros_like(v_t)
        for n in range(v_t.shape[0]):
            for m in range(k):
                cos = [float(np.dot(v_s[n, :, c], v_t[n, :, m])) for c in range(v_s.shape[2])]
                best = int(np.argmax(np.abs(cos)))
                v_s_aligned[n, :, m] = math.copysign(1.0, cos[best]) * v_s[n, :, best] * s_t[n, m]
                v_t[n, :, m] = v_t[n, :, m] * s_t[n, m]
        aligned.append((v_s_aligned, v_t))
    expected = []
    for layer in range(1, len(shapes)):
        (vs, vt), (vs_prev, vt_prev) = aligned[layer], aligned[layer - 1]
        total = 0.0
        for n in range(vs.shape[0]):
            for i in range(vs.shape[1]):
                for j in range(vs_prev.shape[1]):
                    for m in range(k):
                        r_s = math.exp(-((vs[n, i, m] - vs_prev[n, j, m]) ** 2) / 8)
                        r_t = math.exp(-((vt[n, i, m] - vt_prev[n, j, m]) ** 2) / 8)
                        total += (r_s - r_t) ** 2
        expected.append(total / vs.shape[0])
    got = KDSVD(k=k)(g_s, g_t)
    assert isinstance(got, list) and len(got) == len(shapes) - 1 and all(x.dim() == 0 for x in got)
    assert _values(got) == pytest.approx(expected, rel=1e-6)


def test_kdsvd_does_not_depend_on_singular_vector_signs() -> None:
    """Negating a feature map flips the sign of its singular vectors (in a backend-chosen way); the loss is unchanged."""
    shapes = [(2, 5, 4, 4), (2, 5, 4, 4)]
    g_s = [_rand(*s, seed=100 + i) for i, s in enumerate(shapes)]
    g_t = [_rand(*s, seed=110 + i) for i, s in enumerate(shapes)]
    base = _values(KDSVD()(g_s, g_t))
    assert base[0] > 0
    assert _values(KDSVD()([-f for f in g_s], [g_t[0], -g_t[1]])) == pytest.approx(base, rel=1e-9)


def test_kdsvd_rejects_channel_mismatch() -> None:
    with pytest.raises(ValueError, match="channel"):
        KDSVD()([_rand(2, 4, 4, 4)], [_rand(2, 5, 4, 4)])


# ----------------------------------------------------------------------------- DKD


def _softmax_list(z: list[float]) -> list[float]:
    top = max(z)
    e = [math.exp(v - top) for v in z]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _dkd_reference(z_s: np.ndarray, z_t: np.ndarray, target: np.ndarray, alpha: float, beta: float, T: float) -> float:
    tckd = nckd = 0.0
    for row_s, row_t, g in zip(z_s, z_t, target):
        p_s, p_t = _softmax_list([v / T for v in row_s]), _softmax_list([v / T for v in row_t])
        tckd += _kl([p_t[g], 1 - p_t[g]], [p_s[g], 1 - p_s[g]])
        others = [c for c in range(len(row_s)) if c != g]
        q_s = _softmax_list([row_s[c] / T for c in others])
        q_t = _softmax_list([row_t[c] / T for c in others])
        nckd += _kl(q_t, q_s)
    n = len(target)
    return T**2 * (alpha * tckd / n + beta * nckd / n)


@pytest.mark.parametrize(("alpha", "beta", "T"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 3.0)])
def test_dkd_golden(alpha: float, beta: float, T: float) -> None:
    """b = [p_g, 1 - p_g] of softmax(z / T); p^ = softmax over classes c != g of z_c / T;
    L = T^2 * (alpha * mean_n KL(b_t || b_s) + beta * mean_n KL(p^_t || p^_s))."""
    z_s, z_t = _rand(6, 10, seed=120) * 3, _rand(6, 10, seed=121) * 3
    target = torch.tensor([0, 3, 9, 3, 5, 1])
    expected = _dkd_reference(z_s.numpy(), z_t.numpy(), target.numpy(), alpha, beta, T)
    got = dkd_loss(z_s, z_t, target, alpha, beta, T)
    assert got.dim() == 0
    assert float(got) == pytest.approx(expected, rel=REL)


def test_dkd_reassembles_kd_for_one_sample() -> None:
    """Zhao et al. Eq. 6: KD = TCKD + (1 - p_g^t) * NCKD (per sample, so with batch size 1)."""
    T = 4.0
    z_s, z_t = _rand(1, 7, seed=130) * 2, _rand(1, 7, seed=131) * 2
    target = torch.tensor([2])
    p_gt_teacher = _softmax_list([v / T for v in z_t[0].tolist()])[2]
    decoupled = dkd_loss(z_s, z_t, target, 1.0, 1.0 - p_gt_teacher, T)
    assert float(decoupled) == pytest.approx(float(DistillKL(T)(z_s, z_t)), rel=REL)


def test_dkd_finite_for_confident_logits() -> None:
    z_s = torch.tensor([[80.0, -60.0, 0.0], [-90.0, 70.0, 5.0]])
    z_t = torch.tensor([[-70.0, 90.0, 0.0], [100.0, -80.0, 5.0]])
    loss = dkd_loss(z_s.requires_grad_(), z_t, torch.tensor([0, 1]), 1.0, 8.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z_s.grad).all()


@pytest.mark.parametrize(("epoch", "ramp"), [(1, 1 / 20), (10, 0.5), (20, 1.0), (35, 1.0)])
def test_dkd_linear_warmup(epoch: int, ramp: float) -> None:
    """mdistiller: loss_dkd = min(epoch / warmup, 1) * dkd_loss(...), warmup 20, epochs counted from 1."""
    z_s, z_t = _rand(4, 5, seed=140), _rand(4, 5, seed=141)
    target = torch.tensor([0, 1, 2, 3])
    full = _dkd_reference(z_s.numpy(), z_t.numpy(), target.numpy(), 1.0, 8.0, 4.0)
    assert float(DKD()(z_s, z_t, target, epoch)) == pytest.approx(ramp * full, rel=REL)


def test_dkd_rejects_nonpositive_warmup() -> None:
    with pytest.raises(ValueError, match="warmup"):
        DKD(warmup=0)


# ----------------------------------------------------------------------------- gradients and conventions


def _maps(*shapes: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    return [_rand(*s, seed=seed + i, dtype=torch.float32).requires_grad_() for i, s in enumerate(shapes)]


def _grad_cases() -> dict[str, Callable[[], tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]]]:
    def list_loss(crit: Callable, s: list, t: list) -> tuple:
        return sum(crit(s, t)), s, t

    def at() -> tuple:
        return list_loss(Attention(), _maps((4, 4, 8, 8), (4, 6, 4, 4), seed=1), _maps((4, 8, 4, 4), (4, 6, 4, 4), seed=5))

    def sp() -> tuple:
        return list_loss(Similarity(), _maps((4, 6, 4, 4), seed=1), _maps((4, 8, 4, 4), seed=5))

    def pkt() -> tuple:
        s, t = _maps((4, 12), seed=1), _maps((4, 20), seed=5)
        return PKT()(s[0], t[0]), s, t

    def ab() -> tuple:
        return list_loss(ABLoss(2), _maps((4, 4, 4, 4), (4, 6, 2, 2), seed=1), _maps((4, 4, 4, 4), (4, 6, 2, 2), seed=5))

    def ft() -> tuple:
        s, t = _maps((4, 3, 8, 8), seed=1), _maps((4, 5, 4, 4), seed=5)
        return FactorTransfer()(s[0], t[0]), s, t

    def fsp() -> tuple:
        shapes = [(4, 3, 8, 8), (4, 4, 4, 4), (4, 5, 4, 4)]
        return list_loss(FSP(shapes, shapes), _maps(*shapes, seed=1), _maps(*shapes, seed=5))

    def nst() -> tuple:
        return list_loss(NSTLoss(), _maps((4, 4, 8, 8), (4, 6, 4, 4), seed=1), _maps((4, 8, 4, 4), (4, 3, 4, 4), seed=5))

    def kdsvd() -> tuple:
        shapes = [(4, 6, 4, 4), (4, 8, 4, 4), (4, 8, 2, 2)]
        return list_loss(KDSVD(), _maps(*shapes, seed=1), _maps(*shapes, seed=5))

    def dkd() -> tuple:
        s, t = _maps((4, 10), seed=1), _maps((4, 10), seed=5)
        return DKD()(s[0], t[0], torch.tensor([1, 2, 3, 4]), 5), s, t

    return {"AT": at, "SP": sp, "PKT": pkt, "AB": ab, "FT": ft, "FSP": fsp, "NST": nst, "KDSVD": kdsvd, "DKD": dkd}


@pytest.mark.parametrize("name", list(_grad_cases()))
def test_gradients_reach_student_only(name: str) -> None:
    loss, student, teacher = _grad_cases()[name]()
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for f in student:
        assert f.grad is not None and torch.isfinite(f.grad).all()
    assert any(f.grad.abs().sum() > 0 for f in student)
    assert all(f.grad is None for f in teacher)  # the teacher side is a fixed target


@pytest.mark.parametrize("crit", [Attention(), Similarity(), NSTLoss(), KDSVD()])
def test_list_losses_reject_unpaired_lists(crit: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="as many"):
        crit([_rand(2, 4, 4, 4)], [_rand(2, 4, 4, 4), _rand(2, 4, 4, 4)])


def test_losses_on_real_model_features() -> None:
    """The feature-list conventions the integrator wires: AT/NST/KD-SVD on feats[1:-1], SP on feats[-2], PKT on
    feats[-1], FSP on feats[:-1], AB on the connector-mapped preact feats[1:-1], FT on feats[-2]."""
    from models import model_dict

    torch.manual_seed(0)
    student, teacher = model_dict["resnet8"](num_classes=10), model_dict["resnet14"](num_classes=10)
    x = torch.randn(3, 3, 32, 32)
    feat_s, _ = student(x, is_feat=True)
    with torch.no_grad():
        feat_t, _ = teacher(x, is_feat=True)
    assert len(Attention()(feat_s[1:-1], feat_t[1:-1])) == 3
    assert len(NSTLoss()(feat_s[1:-1], feat_t[1:-1])) == 3
    assert len(KDSVD()(feat_s[1:-1], feat_t[1:-1])) == 2
    assert len(Similarity()([feat_s[-2]], [feat_t[-2]])) == 1
    assert PKT()(feat_s[-1], feat_t[-1]).dim() == 0
    shapes_s, shapes_t = [f.shape for f in feat_s[:-1]], [f.shape for f in feat_t[:-1]]
    assert len(FSP(shapes_s, shapes_t)(feat_s[:-1], feat_t[:-1])) == 3
    pre_s, _ = student(x, is_feat=True, preact=True)
    pre_t, _ = teacher(x, is_feat=True, preact=True)
    conn = Connector([f.shape for f in pre_s[1:-1]], [f.shape for f in pre_t[1:-1]])
    assert len(ABLoss(3)(conn(pre_s[1:-1]), pre_t[1:-1])) == 3
    para = Paraphraser(feat_t[-2].shape)
    trans = Translator(feat_s[-2].shape, feat_t[-2].shape)
    assert FactorTransfer()(trans(feat_s[-2]), para(feat_t[-2], is_factor=True)).dim() == 0
