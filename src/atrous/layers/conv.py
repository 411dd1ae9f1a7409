"""Convolutions with an attached normalisation and activation, and detectron2's initialisers.

`Conv2d` keeps the norm as a sub-module named ``norm`` so that state-dict names are those of
detectron2 (``res2.0.conv1.weight``, ``res2.0.conv1.norm.running_mean``) and model-zoo
checkpoints load without renaming.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .norm import get_norm

__all__ = ["Conv2d", "DepthwiseSeparableConv2d", "c2_msra_fill", "c2_xavier_fill"]


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` followed by an optional norm module and an optional activation.

    Args are those of `nn.Conv2d`, plus:
        norm: module applied to the convolution output (e.g. BatchNorm2d), or None.
        activation: callable applied last (e.g. `F.relu` or `nn.ReLU()`), or None.
    """

    def __init__(
        self,
        *args,
        norm: nn.Module | None = None,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, H', W')."""
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def c2_msra_fill(module: nn.Conv2d) -> None:
    """Kaiming normal (fan_out, ReLU gain), bias 0: Caffe2's MSRAFill, used for backbones."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """Kaiming uniform with a=1, bias 0: Caffe2's XavierFill, used for the heads."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class DepthwiseSeparableConv2d(nn.Module):
    """A depthwise KxK convolution followed by a pointwise 1x1 convolution, each with norm/act.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size, padding, dilation: of the depthwise convolution.
        norm1, norm2: norm names for `get_norm` ("" for none, which adds a bias instead).
        activation1, activation2: activations after each convolution, or None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: int = 1,
        dilation: int = 1,
        *,
        norm1: str = "",
        activation1: Callable[[torch.Tensor], torch.Tensor] | None = None,
        norm2: str = "",
        activation2: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.depthwise = Conv2d(
            in_channels,
            in_channels,
            kernel_size=kernel_size,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=not norm1,
            norm=get_norm(norm1, in_channels),
            activation=activation1,
        )
        self.pointwise = Conv2d(
            in_channels,
            out_channels,
            kernel_size=1,
            bias=not norm2,
            norm=get_norm(norm2, out_channels),
            activation=activation2,
        )
        c2_msra_fill(self.depthwise)
        c2_msra_fill(self.pointwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, H, W)."""
        return self.pointwise(self.depthwise(x))
