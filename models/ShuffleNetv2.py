"""ShuffleNetV2 (1x) from Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design"
(ECCV 2018), CIFAR form with a 1x1 stem and stage widths 116/232/464 (RepDistiller's ``ShuffleV2``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ShuffleNetv1 import channel_shuffle
from .util import ModelOutput

__all__ = ["ShuffleV2Block", "ShuffleV2DownBlock", "ShuffleNetV2", "ShuffleV2", "CONFIGS"]

# net size -> (stage widths + final 1x1 width, blocks per stage after the down-sampling unit)
CONFIGS: dict[float, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2: ((224, 488, 976, 2048), (3, 7, 3)),
}


class ShuffleV2Block(nn.Module):
    """Channel split: half passes through, half goes 1x1 -> depthwise 3x3 -> 1x1; concat then shuffle."""

    def __init__(self, in_channels: int, is_last: bool = False) -> None:
        super().__init__()
        self.is_last = is_last
        c = in_channels // 2
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        branch_pre = self.bn3(self.conv3(out))
        out = channel_shuffle(torch.cat([x1, F.relu(branch_pre)], 1), 2)
        if not self.is_last:
            return out
        # shuffled like the output, so relu(preact) == out (x1 is already a ReLU output)
        preact = channel_shuffle(torch.cat([x1, branch_pre], 1), 2)
        return out, preact


class ShuffleV2DownBlock(nn.Module):
    """Stride-2 unit: two branches on the full input, each producing half of ``out_channels``; concat then shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        # left branch: depthwise 3x3 stride 2 -> 1x1
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1x1 -> depthwise 3x3 stride 2 -> 1x1
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """Three ShuffleNetV2 stages on a 1x1 stem, then a 1x1 conv to ``out_channels[3]``, for 32x32 inputs."""

    def __init__(self, net_size: float = 1, num_classes: int = 100) -> None:
        super().__init__()
        out_channels, num_blocks = CONFIGS[net_size]
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [ShuffleV2DownBlock(self.in_channels, out_channels)]
        layers += [ShuffleV2Block(out_channels, is_last=(i == num_blocks - 1)) for i in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.Module]:
        raise NotImplementedError("ShuffleV2's pre-activation mixes a BN output with pass-through channels, not a single BN layer")

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self.layer1(f0)
        f2, f2_pre = self.layer2(f1)
        f3, f3_pre = self.layer3(f2)
        f4 = torch.flatten(self.avgpool(F.relu(self.bn2(self.conv2(f3)))), 1)
        logits = self.linear(f4)
        if not is_feat:
            return logits
        feats = [f0, f1_pre, f2_pre, f3_pre, f4] if preact else [f0, f1, f2, f3, f4]
        return feats, logits


def ShuffleV2(num_classes: int = 100) -> ShuffleNetV2:
    return ShuffleNetV2(net_size=1, num_classes=num_classes)
