"""VGG with BatchNorm from Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition"
(ICLR 2015), in the CIFAR form RepDistiller uses: five conv blocks, no FC stack, one linear classifier.

``vgg8`` is RepDistiller's shallow "S" configuration. Module names (``block0..4``, ``classifier``) match its checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .util import ModelOutput, init_conv_fan_out

__all__ = ["VGG", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "CFG"]

# conv widths of each of the five blocks
CFG: dict[str, list[list[int]]] = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _make_block(widths: Sequence[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    # the block ends at its last BN: forward applies that ReLU so the pre-activation can be returned
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """Five conv-BN-ReLU blocks separated by 2x2 max-pools, global average pool, linear classifier."""

    def __init__(self, cfg: Sequence[Sequence[int]], num_classes: int = 100) -> None:
        super().__init__()
        self.block0 = _make_block(cfg[0], 3)
        self.block1 = _make_block(cfg[1], cfg[0][-1])
        self.block2 = _make_block(cfg[2], cfg[1][-1])
        self.block3 = _make_block(cfg[3], cfg[2][-1])
        self.block4 = _make_block(cfg[4], cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        init_conv_fan_out(self, linear_std=0.01)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList(
            [self.block0, self.pool0, self.block1, self.pool1, self.block2, self.pool2, self.block3, self.pool3, self.block4, self.pool4]
        )

    def get_bn_before_relu(self) -> list[nn.Module]:
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False) -> ModelOutput:
        height = x.shape[2]
        f0 = F.relu(self.block0(x))
        f1_pre = self.block1(self.pool0(f0))
        f1 = F.relu(f1_pre)
        f2_pre = self.block2(self.pool1(f1))
        f2 = F.relu(f2_pre)
        f3_pre = self.block3(self.pool2(f2))
        f3 = F.relu(f3_pre)
        # 32x32 inputs keep a 4x4 map for block4; 64x64 (Tiny-ImageNet style) inputs get one more pool, as in RepDistiller
        x = self.pool3(f3) if height == 64 else f3
        f4_pre = self.block4(x)
        f4 = F.relu(f4_pre)
        f5 = torch.flatten(self.pool4(f4), 1)
        logits = self.classifier(f5)
        if not is_feat:
            return logits
        feats = [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5] if preact else [f0, f1, f2, f3, f4, f5]
        return feats, logits


def vgg8(num_classes: int = 100) -> VGG:
    return VGG(CFG["S"], num_classes=num_classes)


def vgg11(num_classes: int = 100) -> VGG:
    return VGG(CFG["A"], num_classes=num_classes)


def vgg13(num_classes: int = 100) -> VGG:
    return VGG(CFG["B"], num_classes=num_classes)


def vgg16(num_classes: int = 100) -> VGG:
    return VGG(CFG["D"], num_classes=num_classes)


def vgg19(num_classes: int = 100) -> VGG:
    return VGG(CFG["E"], num_classes=num_classes)
