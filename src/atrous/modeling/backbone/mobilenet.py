"""MobileNetV3-Large with torchvision's structure, a width multiplier and a dilated last stage.

The layers, their order and their channel counts are those of torchvision's
``mobilenet_v3_large(width_mult=..., dilated=...)``, so its ImageNet and DeepLabV3 files load by
name (`atrous.checkpoint.torchvision` renames ``features.4.block.1.0`` to
``features.4.block.1`` and ``features.4.block.1.1`` to ``features.4.block.1.norm``). Every
convolution is an `atrous.layers.Conv2d` with its norm attached, so the fast path folds them.

Outputs are named after the ResNet outputs of the same nominal stride, so DeepLab configs swap
backbones without renaming features:

=========  =================  ======  ==============================================
name       ``features``       stride  channels at width 1.0
=========  =================  ======  ==============================================
``stem``   0-1                2       16
``res2``   2-3                4       24 (the classic mobile DeepLabV3+ low-level feature)
``res3``   4-6                8       40
``res4``   7-12               16      112
``res5``   13-16              16      960 (32 when not dilated; 16 is the last 1x1 conv)
=========  =================  ======  ==============================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from ...layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, c2_msra_fill, get_norm

__all__ = [
    "MOBILENET_V3_LARGE",
    "BlockConfig",
    "InvertedResidual",
    "MobileNetV3",
    "SqueezeExcitation",
    "make_divisible",
]

# torchvision's MobileNetV3 batch norms: eps 1e-3, momentum 0.01 (TensorFlow's defaults).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class BlockConfig(NamedTuple):
    """One inverted-residual block at width 1.0 (torchvision's ``InvertedResidualConfig``)."""

    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    squeeze_excite: bool
    hardswish: bool
    stride: int


# fmt: off
MOBILENET_V3_LARGE: tuple[BlockConfig, ...] = (
    BlockConfig(16, 3, 16, 16, False, False, 1),
    BlockConfig(16, 3, 64, 24, False, False, 2),
    BlockConfig(24, 3, 72, 24, False, False, 1),
    BlockConfig(24, 5, 72, 40, True, False, 2),
    BlockConfig(40, 5, 120, 40, True, False, 1),
    BlockConfig(40, 5, 120, 40, True, False, 1),
    BlockConfig(40, 3, 240, 80, False, True, 2),
    BlockConfig(80, 3, 200, 80, False, True, 1),
    BlockConfig(80, 3, 184, 80, False, True, 1),
    BlockConfig(80, 3, 184, 80, False, True, 1),
    BlockConfig(80, 3, 480, 112, True, True, 1),
    BlockConfig(112, 3, 672, 112, True, True, 1),
    BlockConfig(112, 5, 672, 160, True, True, 2),
    BlockConfig(160, 5, 960, 160, True, True, 1),
    BlockConfig(160, 5, 960, 160, True, True, 1),
)
# fmt: on

# Last index in ``features`` of each named output (see the module docstring).
_OUTPUT_INDEX = {"stem": 1, "res2": 3, "res3": 6, "res4": 12, "res5": 16}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10% below `value`
    (torchvision's and TensorFlow's ``_make_divisible``)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class SqueezeExcitation(nn.Module):
    """Global average -> 1x1 conv -> ReLU -> 1x1 conv -> hard sigmoid, scaling the channels."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(scale))))
        return x * scale


def _conv(
    in_channels: int,
    out_channels: int,
    kernel: int,
    *,
    norm: str,
    activation: nn.Module | None,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
) -> Conv2d:
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel,
        stride=stride,
        padding=(kernel - 1) // 2 * dilation,
        dilation=dilation,
        groups=groups,
        bias=not norm,
        norm=get_norm(norm, out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
        activation=activation,
    )
    c2_msra_fill(conv)
    return conv


class InvertedResidual(nn.Module):
    """1x1 expansion (unless it would not expand), KxK depthwise (strided or dilated), optional
    squeeze-excitation, 1x1 linear projection; residual when shape is kept.

    Args:
        cfg: the block at width 1.0.
        width_mult: channel multiplier (counts rounded by `make_divisible`).
        dilation: dilation of the depthwise conv; a dilated block does not stride.
        norm: norm name for `get_norm`.
    """

    def __init__(self, cfg: BlockConfig, *, width_mult: float, dilation: int, norm: str) -> None:
        super().__init__()
        in_channels = make_divisible(cfg.in_channels * width_mult)
        expanded = make_divisible(cfg.expanded * width_mult)
        self.out_channels = make_divisible(cfg.out_channels * width_mult)
        self.use_residual = cfg.stride == 1 and in_channels == self.out_channels
        act = nn.Hardswish if cfg.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(_conv(in_channels, expanded, 1, norm=norm, activation=act()))
        layers.append(
            _conv(
                expanded,
                expanded,
                cfg.kernel,
                stride=1 if dilation > 1 else cfg.stride,
                dilation=dilation,
                groups=expanded,
                norm=norm,
                activation=act(),
            )
        )
        if cfg.squeeze_excite:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4)))
        layers.append(_conv(expanded, self.out_channels, 1, norm=norm, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)."""
        y = self.block(x)
        return y + x if self.use_residual else y


class MobileNetV3(nn.Module):
    """MobileNetV3-Large feature extractor returning the requested named outputs.

    Args:
        width_mult: channel multiplier of every layer (torchvision's ``width_mult``).
        dilated: dilate the last stage (dilation 2, no stride): output stride 16 instead of 32,
            as torchvision's segmentation models build it.
        out_features: names of the outputs to return (stem, res2 .. res5).
        norm: norm name for `get_norm` (eps 1e-3 and momentum 0.01, as torchvision's).
        blocks: the inverted-residual blocks at width 1.0.
    """

    # Inputs are never padded by the backbone.
    size_divisibility = 0

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        dilated: bool = True,
        out_features: Sequence[str] = ("res5",),
        norm: str = "BN",
        blocks: Sequence[BlockConfig] = MOBILENET_V3_LARGE,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"MODEL.MOBILENET.WIDTH_MULT must be positive, got {width_mult}.")
        unknown = [f for f in out_features if f not in _OUTPUT_INDEX]
        if unknown:
            raise ValueError(
                f"Unknown MobileNetV3 output(s) {unknown}; available: {list(_OUTPUT_INDEX)}."
            )
        stem_channels = make_divisible(blocks[0].in_channels * width_mult)
        layers: list[nn.Module] = [
            _conv(3, stem_channels, 3, stride=2, norm=norm, activation=nn.Hardswish())
        ]
        strides, channels = [2], [stem_channels]
        # The last stage is the one after the last strided block but the final one.
        last_stage = max(i for i, b in enumerate(blocks) if b.stride > 1)
        for index, block in enumerate(blocks):
            dilation = 2 if dilated and index >= last_stage else 1
            layers.append(
                InvertedResidual(block, width_mult=width_mult, dilation=dilation, norm=norm)
            )
            strides.append(strides[-1] * (block.stride if dilation == 1 else 1))
            channels.append(layers[-1].out_channels)
        last = 6 * channels[-1]
        layers.append(_conv(channels[-1], last, 1, norm=norm, activation=nn.Hardswish()))
        strides.append(strides[-1])
        channels.append(last)
        self.features = nn.Sequential(*layers)
        self._shapes = {
            name: ShapeSpec(channels=channels[i], stride=strides[i])
            for name, i in _OUTPUT_INDEX.items()
        }
        self.out_features = list(out_features)
        self._last_index = max(_OUTPUT_INDEX[f] for f in self.out_features)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of every returned feature map."""
        return {name: self._shapes[name] for name in self.out_features}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 3, H, W) -> {name: (N, C_name, ~H / stride_name, ~W / stride_name)}."""
        wanted = {_OUTPUT_INDEX[name]: name for name in self.out_features}
        outputs = {}
        for index in range(self._last_index + 1):
            x = self.features[index](x)
            if index in wanted:
                outputs[wanted[index]] = x
        return outputs

    def freeze(self, freeze_at: int = 0) -> MobileNetV3:
        """Freeze the stem (freeze_at >= 1) and the stages up to res<freeze_at> (as ResNet).

        Frozen layers stop receiving gradients and their BatchNorms become FrozenBatchNorm2d.
        """
        names = list(_OUTPUT_INDEX)[: max(0, min(freeze_at, len(_OUTPUT_INDEX)))]
        if not names:
            return self
        for index in range(_OUTPUT_INDEX[names[-1]] + 1):
            layer = self.features[index]
            for p in layer.parameters():
                p.requires_grad = False
            self.features[index] = FrozenBatchNorm2d.convert_frozen_batchnorm(layer)
        return self
