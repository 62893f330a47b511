"""Adapters that distillers put between student and teacher features, plus small helpers shared by the model zoo.

``ConvReg`` is the FitNet regressor (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015);
``Embed`` / ``LinearEmbed`` are the projection heads used by CRD-style and CC losses;
``Paraphraser`` / ``Translator`` are the Factor Transfer encoders (Kim et al., NeurIPS 2018) and
``Connector`` the per-layer student adapters of Activation Boundaries (Heo et al., AAAI 2019).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Connector", "ConvReg", "Embed", "LinearEmbed", "ModelOutput", "Paraphraser", "Translator", "init_conv_fan_out"]

# What every zoo model's forward returns: logits, or (features, logits) with is_feat=True.
ModelOutput = Tensor | tuple[list[Tensor], Tensor]


def _as_4d(shape: Sequence[int], what: str) -> tuple[int, int, int, int]:
    dims = tuple(int(d) for d in shape)
    if len(dims) != 4:
        raise ValueError(f"ConvReg expects a 4-d (N, C, H, W) {what} feature shape, got {tuple(shape)}")
    return dims  # type: ignore[return-value]


class ConvReg(nn.Module):
    """FitNet regressor mapping a student feature map (N, C, H, W) onto the teacher's shape.

    The spatial change picks the layer: halve with a stride-2 3x3 conv, double with a 4x4 stride-2
    transposed conv, otherwise shrink with a "valid" conv of kernel (1 + s_H - t_H, 1 + s_W - t_W).
    Conv -> BatchNorm -> optional ReLU. ``use_relu=False`` keeps the output signed, which is what the
    CKD + FitNet combination needs since it regresses *difference* features.
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], use_relu: bool = True) -> None:
        super().__init__()
        self.use_relu = use_relu
        _, s_c, s_h, s_w = _as_4d(s_shape, "student")
        _, t_c, t_h, t_w = _as_4d(t_shape, "teacher")
        self.conv: nn.Module
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(
                f"ConvReg cannot map student shape {tuple(s_shape)} to teacher shape {tuple(t_shape)}: "
                "the student map must be 2x, 1/2x, or at least as large as the teacher map"
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x


def _conv_stack(channels: Sequence[int], use_bn: bool, transpose: bool = False) -> nn.Sequential:
    """3x3 stride-1 (transposed) convs between consecutive widths, each followed by optional BN and LeakyReLU(0.1).

    Layer indices (conv, BN-or-empty, activation) match RepDistiller's, so its state dicts load.
    """
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [conv(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out) if use_bn else nn.Sequential(), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Factor Transfer paraphraser: a conv autoencoder on the teacher feature map (N, C, H, W).

    The encoder maps C -> C -> int(C * k) -> int(C * k) channels (the factor); the decoder maps back.
    It is trained alone first (reconstruction MSE), then frozen and used with ``is_factor=True``.
    """

    def __init__(self, t_shape: Sequence[int], k: float = 0.5, use_bn: bool = False) -> None:
        super().__init__()
        in_channel = int(t_shape[1])
        out_channel = int(t_shape[1] * k)
        self.encoder = _conv_stack([in_channel, in_channel, out_channel, out_channel], use_bn)
        self.decoder = _conv_stack([out_channel, out_channel, in_channel, in_channel], use_bn, transpose=True)

    def forward(self, f_s: Tensor, is_factor: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The factor alone when ``is_factor``, else (factor, reconstruction)."""
        factor = self.encoder(f_s)
        if is_factor:
            return factor
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Factor Transfer translator: encodes the student feature map into a factor of int(C_t * k) channels."""

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], k: float = 0.5, use_bn: bool = True) -> None:
        super().__init__()
        in_channel = int(s_shape[1])
        out_channel = int(t_shape[1] * k)
        self.encoder = _conv_stack([in_channel, in_channel, out_channel, out_channel], use_bn)

    def forward(self, f_s: Tensor) -> Tensor:
        return self.encoder(f_s)


class Connector(nn.Module):
    """Activation Boundaries connectors: per layer, identity when channels and height already match the
    teacher's, otherwise a ``ConvReg`` without the final ReLU (the AB loss needs signed outputs)."""

    def __init__(self, s_shapes: Sequence[Sequence[int]], t_shapes: Sequence[Sequence[int]]) -> None:
        super().__init__()
        if len(s_shapes) != len(t_shapes):
            raise ValueError(f"Connector needs as many student as teacher shapes, got {len(s_shapes)} and {len(t_shapes)}")
        self.connectors = nn.ModuleList(
            nn.Sequential() if s[1] == t[1] and s[2] == t[2] else ConvReg(s, t, use_relu=False)
            for s, t in zip(s_shapes, t_shapes)
        )

    def forward(self, g_s: Sequence[Tensor]) -> list[Tensor]:
        return [connector(f) for connector, f in zip(self.connectors, g_s)]


class Embed(nn.Module):
    """Flatten, project linearly, then L2-normalise each row (CRD's embedding head)."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(torch.flatten(x, 1))
        return F.normalize(x, p=2, dim=1)


class LinearEmbed(nn.Module):
    """Flatten and project linearly, no normalisation (the embedding used by Correlation Congruence)."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(torch.flatten(x, 1))


def init_conv_fan_out(model: nn.Module, linear_std: float | None = None) -> None:
    """He-normal (fan-out) convolutions, unit/zero BatchNorm; linear layers get N(0, linear_std) and zero bias if given.

    This is the initialisation the RepDistiller CIFAR models start from; loaded checkpoints overwrite it.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
