"""Model zoo tests: exact RepDistiller layout (checked against the reference manifest), features, autograd,
checkpoint round trips, CPU fallback, and the distiller adapters in models/util.py. CPU only, a few seconds each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import core.device
from core.device import resolve_device
from models import model_dict
from models.util import ConvReg, Embed, LinearEmbed

MANIFEST_PATH = Path(__file__).parent / "data" / "model_manifest.json"

EXPECTED_NAMES = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "ResNet50", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "MobileNetV2", "ShuffleV1", "ShuffleV2",
]  # fmt: skip


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST_PATH.read_text())


def test_model_dict_names() -> None:
    assert len(model_dict) == 22
    assert list(model_dict) == EXPECTED_NAMES


def test_manifest_covers_model_dict(manifest: dict) -> None:
    assert list(manifest) == EXPECTED_NAMES


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_architecture_matches_manifest_and_backprops(name: str, manifest: dict) -> None:
    torch.manual_seed(0)
    ref = manifest[name]
    model = model_dict[name](num_classes=100)

    state = model.state_dict()
    assert list(state) == [key for key, _ in ref["state_dict"]], "state_dict keys or their order differ from RepDistiller"
    assert [list(t.shape) for t in state.values()] == [shape for _, shape in ref["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == ref["params"]

    model.train()
    feats, logits = model(torch.randn(2, 3, 32, 32), is_feat=True)
    assert [list(f.shape[1:]) for f in feats] == ref["feat_shapes"]
    assert list(logits.shape) == [2, *ref["logit_shape"]]
    assert torch.equal(feats[-1], feats[-1].flatten(1)), "the last feature must be the pooled vector"

    # features and logits in one loss: autograd fails if a returned feature was overwritten in place
    loss = F.cross_entropy(logits, torch.tensor([3, 7])) + sum(f.pow(2).mean() for f in feats)
    loss.backward()
    stem = model.get_parameter(ref["state_dict"][0][0])
    assert stem.dim() == 4, "the manifest's first key should be the stem conv"
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


def _family(name: str) -> str:
    if name.startswith("wrn"):
        return "wrn"
    if name == "MobileNetV2":
        return "mobilenet"
    return "relu_after"  # resnets, ResNet50, vgg, ShuffleV1/V2: feature == relu(preact)


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_preact_features_and_other_num_classes(name: str) -> None:
    torch.manual_seed(0)
    model = model_dict[name](num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        pre, logits_pre = model(x, is_feat=True, preact=True)
        plain = model(x)
    assert logits.shape == (2, 10)
    torch.testing.assert_close(logits_pre, logits)
    torch.testing.assert_close(plain, logits)
    assert [f.shape for f in pre] == [f.shape for f in feats]
    torch.testing.assert_close(pre[0], feats[0])  # stem output is never a pre-activation
    torch.testing.assert_close(pre[-1], feats[-1])  # pooled vector neither

    family = _family(name)
    stages = range(1, len(feats) - 1)
    if family == "mobilenet":
        for i in stages:
            torch.testing.assert_close(pre[i], feats[i])
    elif family == "wrn":
        bns = model.get_bn_before_relu()
        for i in stages:
            torch.testing.assert_close(pre[i], bns[i - 1](feats[i]))
        # the last pre-activation is exactly what the head pools after a ReLU
        torch.testing.assert_close(F.adaptive_avg_pool2d(F.relu(pre[-2]), 1).flatten(1), feats[-1])
    else:
        for i in stages:
            assert (pre[i] < 0).any(), f"stage {i} pre-activation has no negative values"
            torch.testing.assert_close(F.relu(pre[i]), feats[i])

    if name.startswith("Shuffle"):
        with pytest.raises(NotImplementedError):
            model.get_bn_before_relu()
    else:
        assert all(isinstance(bn, nn.BatchNorm2d) for bn in model.get_bn_before_relu())
    assert isinstance(model.get_feat_modules(), nn.ModuleList)


def test_wrn_preact_leaves_bn_statistics_alone() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    a, b = model_dict["wrn_16_1"](), model_dict["wrn_16_1"]()
    b.load_state_dict(a.state_dict())
    a.train()
    b.train()
    a(x, is_feat=True)
    b(x, is_feat=True, preact=True)
    for (key, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), f"{key} changed differently when preact=True"


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "MobileNetV2", "ShuffleV2"])
def test_checkpoint_roundtrip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = model_dict[name](num_classes=100)
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 32, 32))  # move BN running stats away from their initial values
    path = tmp_path / f"{name}_best.pth"
    torch.save({"model": model.state_dict(), "epoch": 240, "accuracy": 71.2}, path)

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 240 and ckpt["accuracy"] == pytest.approx(71.2)
    torch.manual_seed(1)
    fresh = model_dict[name](num_classes=100)
    fresh.load_state_dict(ckpt["model"], strict=True)

    model.eval()
    fresh.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))


def test_runs_on_cpu_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(core.device, "_mps_available", lambda: False)
    device = resolve_device("auto")
    assert device.type == "cpu"
    model = model_dict["resnet8"](num_classes=100).to(device)
    feats, logits = model(torch.randn(2, 3, 32, 32, device=device), is_feat=True)
    assert logits.device.type == "cpu" and logits.shape == (2, 100)
    assert all(f.device.type == "cpu" for f in feats)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet32", [[16, 64, 64], [16, 64, 64], [32, 32, 32], [64, 16, 16], [64]]),
        ("wrn_16_2", [[16, 64, 64], [32, 64, 64], [64, 32, 32], [128, 16, 16], [128]]),
    ],
)
def test_adaptive_pooling_accepts_64px(name: str, expected: list[list[int]]) -> None:
    model = model_dict[name](num_classes=100).eval()
    with torch.no_grad():
        feats, logits = model(torch.randn(1, 3, 64, 64), is_feat=True)
    assert [list(f.shape[1:]) for f in feats] == expected
    assert logits.shape == (1, 100)


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "layer", "kernel", "stride"),
    [
        ((2, 16, 16, 16), (2, 32, 8, 8), nn.Conv2d, (3, 3), (2, 2)),  # halve
        ((2, 16, 8, 8), (2, 32, 16, 16), nn.ConvTranspose2d, (4, 4), (2, 2)),  # double
        ((2, 16, 8, 8), (2, 32, 6, 6), nn.Conv2d, (3, 3), (1, 1)),  # shrink with a valid conv
        ((2, 16, 8, 8), (2, 32, 8, 8), nn.Conv2d, (1, 1), (1, 1)),  # same size: 1x1
    ],
)
def test_convreg_cases(s_shape: tuple, t_shape: tuple, layer: type, kernel: tuple, stride: tuple) -> None:
    torch.manual_seed(0)
    reg = ConvReg(s_shape, t_shape)
    assert type(reg.conv) is layer
    assert reg.conv.kernel_size == kernel and reg.conv.stride == stride
    out = reg(torch.randn(*s_shape))
    assert out.shape == t_shape
    assert (out >= 0).all()


def test_convreg_rejects_unmappable_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 16, 4, 4\).*\(2, 32, 16, 16\)"):
        ConvReg((2, 16, 4, 4), (2, 32, 16, 16))


def test_convreg_without_relu_is_signed() -> None:
    torch.manual_seed(0)
    s_shape, t_shape = (4, 8, 8, 8), (4, 16, 4, 4)
    diff = torch.randn(*s_shape)  # difference features are signed
    out = ConvReg(s_shape, t_shape, use_relu=False)(diff)
    assert out.shape == t_shape
    assert (out < 0).any() and (out > 0).any()


def test_embed_rows_have_unit_norm() -> None:
    torch.manual_seed(0)
    out = Embed(dim_in=64 * 2 * 2, dim_out=32)(torch.randn(5, 64, 2, 2))
    assert out.shape == (5, 32)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


def test_linear_embed_is_unnormalised_linear() -> None:
    torch.manual_seed(0)
    embed = LinearEmbed(dim_in=256, dim_out=16)
    x = torch.randn(5, 64, 2, 2)
    out = embed(x)
    assert out.shape == (5, 16)
    torch.testing.assert_close(out, embed.linear(x.flatten(1)))
    assert not torch.allclose(out.norm(dim=1), torch.ones(5))
