"""ResNet-50 with Bottleneck blocks (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), CIFAR stem.

The ImageNet 7x7/stride-2 stem and max-pool are replaced by one 3x3/stride-1 conv, as in RepDistiller's
``resnetv2``; module names (``conv1``, ``bn1``, ``layer1..4``, ``shortcut``, ``linear``) match its checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .util import ModelOutput, init_conv_fan_out

__all__ = ["Bottleneck", "ResNetV2", "ResNet50"]


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 expansion) residual block; the last block of a stage also returns its pre-activation."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, is_last: bool = False) -> None:
        super().__init__()
        self.is_last = is_last
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        preact = out + self.shortcut(x)
        out = F.relu(preact)  # not in place: preact is handed out as a feature
        return (out, preact) if self.is_last else out


class ResNetV2(nn.Module):
    """Four-stage Bottleneck ResNet for 32x32 inputs (features at 32, 16, 8, 4 pixels)."""

    def __init__(self, num_blocks: Sequence[int], num_classes: int = 100) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * Bottleneck.expansion, num_classes)
        init_conv_fan_out(self)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            layers.append(Bottleneck(self.in_planes, planes, stride if i == 0 else 1, is_last=(i == num_blocks - 1)))
            self.in_planes = planes * Bottleneck.expansion
        return nn.Sequential(*layers)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.layer1[-1].bn3, self.layer2[-1].bn3, self.layer3[-1].bn3, self.layer4[-1].bn3]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self.layer1(f0)
        f2, f2_pre = self.layer2(f1)
        f3, f3_pre = self.layer3(f2)
        f4, f4_pre = self.layer4(f3)
        f5 = torch.flatten(self.avgpool(f4), 1)
        logits = self.linear(f5)
        if not is_feat:
            return logits
        feats = [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5] if preact else [f0, f1, f2, f3, f4, f5]
        return feats, logits


def ResNet50(num_classes: int = 100) -> ResNetV2:
    return ResNetV2([3, 4, 6, 3], num_classes=num_classes)
