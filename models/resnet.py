"""CIFAR ResNets from He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), RepDistiller layout.

A 3x3 stem and three stages of BasicBlocks (depth = 6n + 2). ``resnet8x4`` / ``resnet32x4`` are the 4x-wider
teachers introduced with CRD (Tian et al., "Contrastive Representation Distillation", ICLR 2020).
Module names match the published RepDistiller checkpoints (``conv1``, ``bn1``, ``layer1..3``, ``fc``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .util import ModelOutput, init_conv_fan_out

__all__ = [
    "BasicBlock",
    "ResNet",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
]


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; the last block of a stage also returns its pre-activation."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, is_last: bool = False) -> None:
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        preact = out + shortcut
        out = F.relu(preact)  # not in place: preact is handed out as a feature
        return (out, preact) if self.is_last else out


class ResNet(nn.Module):
    """CIFAR ResNet; ``num_filters`` = (stem, stage1, stage2, stage3) widths."""

    def __init__(self, depth: int, num_filters: Sequence[int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = self._make_layer(num_filters[1], n, stride=1)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # adaptive so 64x64 inputs work too
        self.fc = nn.Linear(num_filters[3], num_classes)
        init_conv_fan_out(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(BasicBlock(self.inplanes, planes, stride if i == 0 else 1, is_last=(i == blocks - 1)))
            self.inplanes = planes
        return nn.Sequential(*layers)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.layer1[-1].bn2, self.layer2[-1].bn2, self.layer3[-1].bn2]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self.layer1(f0)
        f2, f2_pre = self.layer2(f1)
        f3, f3_pre = self.layer3(f2)
        f4 = torch.flatten(self.avgpool(f3), 1)
        logits = self.fc(f4)
        if not is_feat:
            return logits
        feats = [f0, f1_pre, f2_pre, f3_pre, f4] if preact else [f0, f1, f2, f3, f4]
        return feats, logits


def resnet8(num_classes: int = 100) -> ResNet:
    return ResNet(8, [16, 16, 32, 64], num_classes=num_classes)


def resnet14(num_classes: int = 100) -> ResNet:
    return ResNet(14, [16, 16, 32, 64], num_classes=num_classes)


def resnet20(num_classes: int = 100) -> ResNet:
    return ResNet(20, [16, 16, 32, 64], num_classes=num_classes)


def resnet32(num_classes: int = 100) -> ResNet:
    return ResNet(32, [16, 16, 32, 64], num_classes=num_classes)


def resnet44(num_classes: int = 100) -> ResNet:
    return ResNet(44, [16, 16, 32, 64], num_classes=num_classes)


def resnet56(num_classes: int = 100) -> ResNet:
    return ResNet(56, [16, 16, 32, 64], num_classes=num_classes)


def resnet110(num_classes: int = 100) -> ResNet:
    return ResNet(110, [16, 16, 32, 64], num_classes=num_classes)


def resnet8x4(num_classes: int = 100) -> ResNet:
    return ResNet(8, [32, 64, 128, 256], num_classes=num_classes)


def resnet32x4(num_classes: int = 100) -> ResNet:
    return ResNet(32, [32, 64, 128, 256], num_classes=num_classes)
