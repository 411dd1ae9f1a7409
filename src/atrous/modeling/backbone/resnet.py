"""ResNet backbones of detectron2 and projects/DeepLab: basic and DeepLab stems, dilated stages.

Module names (``stem.conv1``, ``res2.0.shortcut``, ``res5.2.conv3.norm``) equal detectron2's so
model-zoo checkpoints load without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, c2_msra_fill, get_norm

__all__ = [
    "BasicStem",
    "BottleneckBlock",
    "DeepLabStem",
    "ResNet",
    "blocks_per_stage",
    "make_stage",
    "stage_dilations",
]

_BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def blocks_per_stage(depth: int) -> tuple[int, int, int, int]:
    """Bottleneck blocks in res2..res5 for a ResNet depth (50, 101 or 152)."""
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"ResNet depth must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}.")
    return _BLOCKS_PER_STAGE[depth]


class BasicStem(nn.Module):
    """7x7 conv (stride 2) + norm + ReLU, then 3x3 max-pool (stride 2): output stride 4."""

    def __init__(self, *, in_channels: int = 3, out_channels: int = 64, norm: str = "BN") -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = 4
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=7,
            stride=2,
            padding=3,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, out_channels, ceil(H/4), ceil(W/4))."""
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DeepLabStem(nn.Module):
    """Three 3x3 convs (3 -> C/2 stride 2, C/2 -> C/2, C/2 -> C), each + norm + ReLU, then max-pool.

    The "R103" stem of projects/DeepLab: a ResNet-101 whose 7x7 stem conv is replaced by three
    3x3 convolutions.
    """

    def __init__(self, *, in_channels: int = 3, out_channels: int = 128, norm: str = "BN") -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = 4
        half = out_channels // 2
        self.conv1 = Conv2d(
            in_channels, half, 3, stride=2, padding=1, bias=False, norm=get_norm(norm, half)
        )
        self.conv2 = Conv2d(
            half, half, 3, stride=1, padding=1, bias=False, norm=get_norm(norm, half)
        )
        self.conv3 = Conv2d(
            half,
            out_channels,
            3,
            stride=1,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for conv in (self.conv1, self.conv2, self.conv3):
            c2_msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, out_channels, ceil(H/4), ceil(W/4))."""
        x = F.relu_(self.conv1(x))
        x = F.relu_(self.conv2(x))
        x = F.relu_(self.conv3(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (dilated, grouped) -> 1x1 residual block with a projection shortcut if needed.

    Args:
        in_channels, out_channels: block input and output channels.
        bottleneck_channels: channels of the 3x3 convolution.
        stride: spatial stride of the block.
        num_groups: groups of the 3x3 convolution (ResNeXt).
        norm: norm name for `get_norm`.
        stride_in_1x1: put the stride in the first 1x1 conv (MSRA weights) instead of the 3x3.
        dilation: dilation (and padding) of the 3x3 convolution.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        if in_channels != out_channels:
            self.shortcut = Conv2d(
                in_channels,
                out_channels,
                kernel_size=1,
                stride=stride,
                bias=False,
                norm=get_norm(norm, out_channels),
            )
        else:
            self.shortcut = None
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            bias=False,
            groups=num_groups,
            dilation=dilation,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if layer is not None:
                c2_msra_fill(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H/stride, W/stride)."""
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)

    def freeze(self) -> BottleneckBlock:
        for p in self.parameters():
            p.requires_grad = False
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self


def make_stage(
    *,
    num_blocks: int,
    in_channels: int,
    out_channels: int,
    bottleneck_channels: int,
    first_stride: int,
    dilation_per_block: Sequence[int],
    num_groups: int = 1,
    norm: str = "BN",
    stride_in_1x1: bool = False,
) -> nn.Sequential:
    """A stage of bottleneck blocks; only the first block strides and changes channels.

    Args:
        dilation_per_block: one dilation per block (multi-grid gives them different values).
    """
    if len(dilation_per_block) != num_blocks:
        raise ValueError(
            f"Got {len(dilation_per_block)} dilations for a stage of {num_blocks} blocks "
            f"(RES5_MULTI_GRID must have one entry per res5 block)."
        )
    blocks = []
    for i, dilation in enumerate(dilation_per_block):
        blocks.append(
            BottleneckBlock(
                in_channels=in_channels if i == 0 else out_channels,
                out_channels=out_channels,
                bottleneck_channels=bottleneck_channels,
                stride=first_stride if i == 0 else 1,
                num_groups=num_groups,
                norm=norm,
                stride_in_1x1=stride_in_1x1,
                dilation=dilation,
            )
        )
    return nn.Sequential(*blocks)


def stage_dilations(
    *,
    depth: int,
    res4_dilation: int = 1,
    res5_dilation: int = 1,
    res5_multi_grid: Sequence[int] | None = None,
    dilate_first_block: bool = True,
) -> dict[str, list[int]]:
    """Per-block dilations of res2..res5: the one place where output stride becomes dilation.

    Output stride 16 is ``res5_dilation=2``; output stride 8 is ``res4_dilation=2,
    res5_dilation=4``. Multi-grid multiplies res5's dilation per block (``[1, 2, 4]`` -> 2, 4, 8).
    A dilated stage does not stride.

    Args:
        dilate_first_block: True (detectron2, projects/DeepLab): every block of a dilated stage
            has the stage's dilation. False (torchvision's ``_make_layer(dilate=True)``, timm):
            the first block keeps the dilation of the stage before it (1 before res4,
            ``res4_dilation`` before res5), as it still sees the previous stage's resolution
            in the networks those weights were trained as.
    """
    if res4_dilation not in (1, 2):
        raise ValueError(f"RES4_DILATION must be 1 or 2, got {res4_dilation}.")
    if res5_dilation not in (1, 2, 4):
        raise ValueError(f"RES5_DILATION must be 1, 2 or 4, got {res5_dilation}.")
    if res4_dilation == 2 and res5_dilation != 4:
        raise ValueError("RES4_DILATION 2 (output stride 8) needs RES5_DILATION 4.")
    counts = blocks_per_stage(depth)
    multi_grid = list(res5_multi_grid) if res5_multi_grid else [1] * counts[3]
    res4 = [res4_dilation] * counts[2]
    res5 = [res5_dilation * g for g in multi_grid]
    if not dilate_first_block:
        res4[0] = 1
        res5[0] = res4_dilation * multi_grid[0]
    return {"res2": [1] * counts[0], "res3": [1] * counts[1], "res4": res4, "res5": res5}


class ResNet(nn.Module):
    """A stem followed by named stages; returns the requested feature maps.

    Args:
        stem: module with ``out_channels`` and ``stride`` attributes.
        stages: ordered mapping-like list of (name, stage) with names "res2".."res5".
        out_features: names of the outputs to return ("stem", "res2", ...).
        stage_strides: stride of each stage's first block (to compute output strides).
    """

    def __init__(
        self,
        *,
        stem: nn.Module,
        stages: list[tuple[str, nn.Sequential]],
        out_features: Sequence[str],
        stage_strides: Sequence[int],
    ) -> None:
        super().__init__()
        self.stem = stem
        self._out_feature_shapes = {
            "stem": ShapeSpec(channels=stem.out_channels, stride=stem.stride)
        }
        self.stage_names = []
        stride = stem.stride
        for (name, stage), first_stride in zip(stages, stage_strides):
            self.add_module(name, stage)
            self.stage_names.append(name)
            stride *= first_stride
            self._out_feature_shapes[name] = ShapeSpec(
                channels=stage[-1].out_channels, stride=stride
            )
        unknown = [f for f in out_features if f not in self._out_feature_shapes]
        if unknown:
            raise ValueError(
                f"Unknown backbone output(s) {unknown}; "
                f"available: {list(self._out_feature_shapes)}."
            )
        self.out_features = list(out_features)

    # Inputs are never padded by the backbone (detectron2: size_divisibility 0).
    size_divisibility = 0

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of every returned feature map."""
        return {name: self._out_feature_shapes[name] for name in self.out_features}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 3, H, W) -> {name: (N, C_name, H / stride_name, W / stride_name)}."""
        outputs = {}
        x = self.stem(x)
        if "stem" in self.out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs

    def freeze(self, freeze_at: int = 0) -> ResNet:
        """Freeze the stem (freeze_at >= 1) and the first ``freeze_at - 1`` stages.

        Frozen parts stop receiving gradients and their BatchNorms become FrozenBatchNorm2d.
        """
        if freeze_at >= 1:
            for p in self.stem.parameters():
                p.requires_grad = False
            self.stem = FrozenBatchNorm2d.convert_frozen_batchnorm(self.stem)
        for index, name in enumerate(self.stage_names, start=2):
            if freeze_at >= index:
                for block in getattr(self, name):
                    block.freeze()
        return self
