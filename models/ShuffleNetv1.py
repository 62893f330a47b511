"""ShuffleNet (v1) from Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile
Devices" (CVPR 2018), CIFAR form with a 1x1 stem, 3 groups, stage widths 240/480/960 (RepDistiller's ``ShuffleV1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .util import ModelOutput

__all__ = ["channel_shuffle", "ShuffleBottleneck", "ShuffleNet", "ShuffleV1"]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave channels across ``groups`` so grouped convs see every group: (N, g*c, H, W) -> channel order c-major."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleBottleneck(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1; stride 2 concatenates an avg-pooled shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, is_last: bool = False) -> None:
        super().__init__()
        self.is_last = is_last
        self.stride = stride
        mid_planes = out_planes // 4
        # the 24-channel stem output is too narrow to group, so the very first 1x1 is dense
        self.first_groups = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        out = F.relu(preact)  # not in place: preact is handed out as a feature
        return (out, preact) if self.is_last else out


class ShuffleNet(nn.Module):
    """Three ShuffleNet stages (each starts with a stride-2 concat unit) on a 1x1 stem, for 32x32 inputs."""

    def __init__(self, out_planes: Sequence[int], num_blocks: Sequence[int], groups: int, num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            # the stride-2 unit concatenates its input, so its branch only produces the missing channels
            branch_planes = out_planes - self.in_planes if i == 0 else out_planes
            layers.append(ShuffleBottleneck(self.in_planes, branch_planes, 2 if i == 0 else 1, groups, is_last=(i == num_blocks - 1)))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.Module]:
        raise NotImplementedError("ShuffleV1's pre-activation is a BN output plus a shortcut, not a single BN layer")

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self.layer1(f0)
        f2, f2_pre = self.layer2(f1)
        f3, f3_pre = self.layer3(f2)
        f4 = torch.flatten(self.avgpool(f3), 1)
        logits = self.linear(f4)
        if not is_feat:
            return logits
        feats = [f0, f1_pre, f2_pre, f3_pre, f4] if preact else [f0, f1, f2, f3, f4]
        return feats, logits


def ShuffleV1(num_classes: int = 100) -> ShuffleNet:
    return ShuffleNet(out_planes=[240, 480, 960], num_blocks=[4, 8, 4], groups=3, num_classes=num_classes)
