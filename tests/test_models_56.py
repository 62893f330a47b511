"""Every ``model_dict`` architecture takes Stanford Cars' 56x56 crops with 196 classes.

Our models end in a global ``AdaptiveAvgPool2d``, so any input size gives the same embedding width. The published CKD
code (alextxu/ckd) pools the last map of three families with fixed windows sized for 32x32 inputs; at 56x56 the
last map is larger, and ``test_published_fixed_pools_at_56`` shows what those windows do there:

* MobileNetV2: ``AvgPool2d(32 // 16, ceil_mode=True)`` turns the 4x4 map into 2x2, so the flattened features are four
  times the classifier's 1280 inputs and the forward fails;
* ShuffleV1 / ShuffleV2: ``avg_pool2d(out, 4)`` on the 7x7 map keeps one output from the top-left 4x4 cells only
  (it runs, but ignores 33 of 49 positions);
* resnet*, wrn_* (pool over the whole map), vgg* and ResNet50 (adaptive pooling) run at 56x56 as ours do.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import model_dict

NUM_CLASSES = 196
CROP = 56

# name -> (kernel, ceil_mode) of the published code's fixed pooling of the last feature map
PUBLISHED_FIXED_POOL = {"MobileNetV2": (2, True), "ShuffleV1": (4, False), "ShuffleV2": (4, False)}
PUBLISHED_FAILS_AT_56 = {"MobileNetV2"}


def _final_pool(model: nn.Module) -> nn.AdaptiveAvgPool2d:
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    assert len(pools) == 1, "expected one global pooling layer before the classifier"
    return pools[0]


def _forward_with_pool_input(model: nn.Module, size: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    seen: list[torch.Tensor] = []

    def keep_input(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen.append(inputs[0])

    handle = _final_pool(model).register_forward_hook(keep_input)
    try:
        with torch.no_grad():
            feats, logits = model(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)), is_feat=True)
    finally:
        handle.remove()
    return feats, logits, seen[0]


@pytest.mark.parametrize("name", list(model_dict))
def test_model_runs_on_56_pixel_crops_with_196_classes(name):
    torch.manual_seed(0)
    model = model_dict[name](num_classes=NUM_CLASSES).eval()
    feats, logits, last_map = _forward_with_pool_input(model, CROP)
    assert logits.shape == (2, NUM_CLASSES) and bool(torch.isfinite(logits).all())
    assert last_map.shape[-1] > 1  # a real spatial map is left to pool at 56x56
    torch.testing.assert_close(feats[-1], last_map.mean(dim=(2, 3)))  # the embedding averages the whole map
    feats_32, _, _ = _forward_with_pool_input(model, 32)
    assert feats[-1].shape == feats_32[-1].shape  # same embedding width as on CIFAR's 32x32


@pytest.mark.parametrize("name", sorted(PUBLISHED_FIXED_POOL))
def test_published_fixed_pools_at_56(name):
    """Apply the published fixed pooling to our (same-shaped) last maps: fine at 32x32, broken or partial at 56x56."""
    kernel, ceil_mode = PUBLISHED_FIXED_POOL[name]
    model = model_dict[name](num_classes=NUM_CLASSES).eval()
    _, _, map_32 = _forward_with_pool_input(model, 32)
    embed = map_32.shape[1]
    assert F.avg_pool2d(map_32, kernel, ceil_mode=ceil_mode).flatten(1).shape[1] == embed

    _, _, map_56 = _forward_with_pool_input(model, CROP)
    pooled = F.avg_pool2d(map_56, kernel, ceil_mode=ceil_mode)
    if name in PUBLISHED_FAILS_AT_56:
        assert pooled.flatten(1).shape[1] != embed  # the published classifier (Linear(embed, classes)) would raise
    else:
        assert pooled.shape[-2:] == (1, 1)
        covered = (pooled.shape[-1] * kernel) ** 2
        assert covered < map_56.shape[-1] * map_56.shape[-2]  # runs, but averages only the top-left corner
