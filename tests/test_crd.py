"""CRD: memory banks as checkpointed buffers, the one-time Z constants, momentum update, NCE golden values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from crd.criterion import ContrastLoss, CRDLoss, Embed
from crd.memory import ContrastMemory

OPT = SimpleNamespace(s_dim=8, t_dim=12, feat_dim=6, nce_k=5, nce_t=0.07, nce_m=0.5, n_data=30)
B = 4


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f_s, f_t = torch.randn(B, OPT.s_dim, generator=g), torch.randn(B, OPT.t_dim, generator=g)
    idx = torch.randperm(OPT.n_data, generator=g)[:B]
    negatives = torch.randint(OPT.n_data, (B, OPT.nce_k), generator=g)
    return f_s, f_t, idx, torch.cat([idx.unsqueeze(1), negatives], dim=1)


def _crd(seed: int = 0) -> CRDLoss:
    torch.manual_seed(seed)
    return CRDLoss(OPT)


def test_memory_banks_are_buffers_with_uniform_init() -> None:
    mem = ContrastMemory(OPT.feat_dim, OPT.n_data, OPT.nce_k, OPT.nce_t, OPT.nce_m)
    state = mem.state_dict()
    assert {"memory_v1", "memory_v2", "params"} <= set(state)
    assert not list(mem.parameters())
    stdv = 1 / math.sqrt(OPT.feat_dim / 3)
    for bank in (mem.memory_v1, mem.memory_v2):
        assert bank.shape == (OPT.n_data, OPT.feat_dim)
        assert bank.abs().max() <= stdv
    assert mem.params.tolist() == pytest.approx([OPT.nce_k, OPT.nce_t, -1, -1, OPT.nce_m])


def test_contrast_loss_golden() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 6, 1, generator=g, dtype=torch.float64) * 1e-2
    n_data, K, eps = 50, 5, 1e-7
    pn = 1 / n_data
    xn = x.numpy()[:, :, 0]
    total = 0.0
    for b in range(3):
        total += math.log(xn[b, 0] / (xn[b, 0] + K * pn + eps))
        for k in range(1, K + 1):
            total += math.log(K * pn / (xn[b, k] + K * pn + eps))
    assert ContrastLoss(n_data)(x).item() == pytest.approx(-total / 3, rel=1e-10)


def test_embed_is_linear_then_l2_normalised() -> None:
    torch.manual_seed(0)
    emb = Embed(12, 4)
    x = torch.randn(3, 3, 2, 2)
    out = emb(x)
    ref = x.flatten(1) @ emb.linear.weight.t() + emb.linear.bias
    assert torch.allclose(out, ref / ref.norm(dim=1, keepdim=True), atol=1e-6)


def test_crd_forward_golden_and_z_set_once() -> None:
    crit = _crd()
    f_s, f_t, idx, cidx = _batch()
    mem = crit.contrast
    bank_s, bank_t = mem.memory_v1.clone().numpy(), mem.memory_v2.clone().numpy()
    with torch.no_grad():
        e_s, e_t = crit.embed_s(f_s).numpy(), crit.embed_t(f_t).numpy()
    T, K, N = OPT.nce_t, OPT.nce_k, OPT.n_data
    c = cidx.numpy()
    # student anchors against the teacher bank, teacher anchors against the student bank
    raw_s = np.array([[math.exp(bank_t[c[b, k]] @ e_s[b] / T) for k in range(K + 1)] for b in range(B)])
    raw_t = np.array([[math.exp(bank_s[c[b, k]] @ e_t[b] / T) for k in range(K + 1)] for b in range(B)])
    z_s, z_t = raw_s.mean() * N, raw_t.mean() * N

    def nce(x: np.ndarray) -> float:
        pn = K / N
        return -(sum(math.log(x[b, 0] / (x[b, 0] + pn + 1e-7)) for b in range(B))
                 + sum(math.log(pn / (x[b, k] + pn + 1e-7)) for b in range(B) for k in range(1, K + 1))) / B

    expected = nce(raw_s / z_s) + nce(raw_t / z_t)
    loss = crit(f_s, f_t, idx, cidx)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert mem.params[2].item() == pytest.approx(z_s, rel=1e-4)
    assert mem.params[3].item() == pytest.approx(z_t, rel=1e-4)
    assert "contrast.params" in crit.state_dict()

    z_after_first = mem.params.clone()
    crit(*_batch(seed=1))
    assert torch.equal(mem.params, z_after_first)  # Z is measured once, then fixed


def test_momentum_update_touches_exactly_the_batch_rows() -> None:
    crit = _crd()
    f_s, f_t, idx, cidx = _batch()
    before_s, before_t = crit.contrast.memory_v1.clone(), crit.contrast.memory_v2.clone()
    with torch.no_grad():
        e_s, e_t = crit.embed_s(f_s), crit.embed_t(f_t)
    crit(f_s, f_t, idx, cidx)
    m = OPT.nce_m
    for bank, before, e in ((crit.contrast.memory_v1, before_s, e_s), (crit.contrast.memory_v2, before_t, e_t)):
        changed = (bank != before).any(dim=1)
        assert set(changed.nonzero().flatten().tolist()) == set(idx.tolist())
        expected = m * before[idx] + (1 - m) * e
        expected = expected / expected.norm(dim=1, keepdim=True)
        assert torch.allclose(bank[idx], expected, atol=1e-6)
        assert torch.allclose(bank[idx].norm(dim=1), torch.ones(B), atol=1e-6)


def test_gradients_reach_student_and_both_embeds_not_teacher() -> None:
    crit = _crd()
    f_s, f_t, idx, cidx = _batch()
    f_s.requires_grad_()
    f_t.requires_grad_()
    crit(f_s, f_t, idx, cidx).backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert f_t.grad is None
    for p in list(crit.embed_s.parameters()) + list(crit.embed_t.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert not crit.contrast.memory_v1.requires_grad and not crit.contrast.params.requires_grad


def test_state_dict_round_trip_gives_identical_output(tmp_path) -> None:
    crit = _crd(seed=0)
    crit(*_batch(seed=0))  # sets Z and moves the banks
    path = tmp_path / "crd.pt"
    torch.save(crit.state_dict(), path)
    resumed = _crd(seed=123)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(resumed.contrast.params, crit.contrast.params)
    batch = _batch(seed=5)
    assert torch.equal(crit(*batch), resumed(*batch))
    assert torch.equal(crit.contrast.memory_v1, resumed.contrast.memory_v1)


def test_contrast_idx_is_required_and_shape_checked() -> None:
    crit = _crd()
    f_s, f_t, idx, cidx = _batch()
    with pytest.raises(ValueError, match="contrast_idx"):
        crit(f_s, f_t, idx, None)
    with pytest.raises(ValueError, match="contrast_idx"):
        crit(f_s, f_t, idx, cidx[:, :-1])


def test_scores_stay_float32_under_autocast() -> None:
    crit = _crd()
    f_s, f_t, idx, cidx = _batch()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = crit(f_s, f_t, idx, cidx)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert crit.contrast.memory_v1.dtype == torch.float32
