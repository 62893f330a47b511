"""Wide Residual Networks from Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016), RepDistiller layout.

Pre-activation blocks (BN -> ReLU -> conv), depth = 6n + 4, widths 16k / 32k / 64k. Module names
(``conv1``, ``block1..3.layer.N``, ``convShortcut``, ``bn1``, ``fc``) match the published checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .util import ModelOutput, init_conv_fan_out

__all__ = ["WideBasicBlock", "NetworkBlock", "WideResNet", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


def _bn_without_update(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """``bn(x)`` without touching running statistics: the network already ran this BN on ``x`` in forward."""
    if bn.training or bn.running_mean is None:
        return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3 twice; a 1x1 projection shortcut when the shape changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.convShortcut: nn.Conv2d | None = None
        if in_planes != out_planes or stride != 1:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # the projection shortcut reads the *activated* input, as the RepDistiller checkpoints were trained
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One WRN stage: ``nb_layers`` blocks held in ``self.layer`` (the name is part of the checkpoint keys)."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k for CIFAR."""

    def __init__(self, depth: int, widen_factor: int = 1, num_classes: int = 100, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # adaptive so 64x64 inputs work too
        self.fc = nn.Linear(widths[3], num_classes)
        self.nChannels = widths[3]
        init_conv_fan_out(self)
        nn.init.zeros_(self.fc.bias)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.block1, self.block2, self.block3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False) -> ModelOutput:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        f3_pre = self.bn1(f3)
        f4 = torch.flatten(self.avgpool(F.relu(f3_pre)), 1)
        logits = self.fc(f4)
        if not is_feat:
            return logits
        if preact:
            # the BN that precedes the next ReLU, applied to the stage output (as RepDistiller's preact)
            f1 = _bn_without_update(self.block2.layer[0].bn1, f1)
            f2 = _bn_without_update(self.block3.layer[0].bn1, f2)
            f3 = f3_pre
        return [f0, f1, f2, f3, f4], logits


def wrn_16_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 1, num_classes=num_classes)


def wrn_16_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 2, num_classes=num_classes)


def wrn_40_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 1, num_classes=num_classes)


def wrn_40_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 2, num_classes=num_classes)
