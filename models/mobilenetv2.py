"""MobileNetV2 from Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018), CIFAR form.

RepDistiller's half-width variant (width 0.5, expansion 6): a stride-2 stem, seven groups of inverted residual
blocks in ``blocks``, a 1x1 conv to 1280 channels and ``classifier``. Module names match its checkpoints.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .util import ModelOutput, init_conv_fan_out

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2_T_w", "mobile_half"]


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """Pointwise expand -> depthwise 3x3 -> linear pointwise project, with identity shortcut when shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        # indices 0..7 are part of the checkpoint keys; the expand conv is kept even for expand_ratio 1
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with expansion ``T`` and width multiplier ``width_mult`` for 32x32 inputs."""

    # expansion (None = use T), channels, repeats, first stride
    SETTINGS: tuple[tuple[int | None, int, int, int], ...] = (
        (1, 16, 1, 1),
        (None, 24, 2, 1),
        (None, 32, 3, 2),
        (None, 64, 4, 2),
        (None, 96, 3, 1),
        (None, 160, 3, 2),
        (None, 320, 1, 1),
    )

    def __init__(self, T: int = 6, width_mult: float = 0.5, num_classes: int = 100) -> None:
        super().__init__()
        input_channel = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, input_channel, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.SETTINGS:
            output_channel = int(c * width_mult)
            group = []
            for i in range(n):
                group.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, T if t is None else t))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*group))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(input_channel, self.last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        init_conv_fan_out(self, linear_std=0.01)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.blocks])

    def get_bn_before_relu(self) -> list[nn.Module]:
        return [self.blocks[1][-1].conv[-1], self.blocks[2][-1].conv[-1], self.blocks[4][-1].conv[-1], self.blocks[6][-1].conv[-1]]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False) -> ModelOutput:
        # preact is accepted for a uniform interface; the stage outputs are linear bottlenecks (no final ReLU), so it changes nothing
        f0 = self.conv1(x)
        f1 = self.blocks[1](self.blocks[0](f0))
        f2 = self.blocks[2](f1)
        f3 = self.blocks[4](self.blocks[3](f2))
        f4 = self.blocks[6](self.blocks[5](f3))
        f5 = torch.flatten(self.avgpool(self.conv2(f4)), 1)
        logits = self.classifier(f5)
        if not is_feat:
            return logits
        return [f0, f1, f2, f3, f4, f5], logits


def mobilenetv2_T_w(T: int, W: float, num_classes: int = 100) -> MobileNetV2:
    return MobileNetV2(T=T, width_mult=W, num_classes=num_classes)


def mobile_half(num_classes: int = 100) -> MobileNetV2:
    return mobilenetv2_T_w(6, 0.5, num_classes)
