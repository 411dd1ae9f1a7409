"""Atrous Spatial Pyramid Pooling (DeepLabV3), with the original's crop-dependent image pooling."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from .conv import Conv2d, DepthwiseSeparableConv2d, c2_xavier_fill
from .norm import get_norm

__all__ = ["ASPP", "ImagePooling"]


class ImagePooling(nn.Module):
    """Average pooling of the whole feature map, or of a fixed window sliding with stride 1.

    detectron2's DeepLab pools with ``AvgPool2d(kernel=train_crop / output_stride, stride=1)``
    when training used crops: global pooling at the crop size, a sliding average on larger test
    images (e.g. a (32, 64) window over the 64x128 res5 map of a 1024x2048 image). That is kept
    exactly where the original runs. Where the original raises (feature size not a multiple of
    the kernel), the sliding average is still well defined and is used as is; a dimension smaller
    than the kernel is pooled globally, which is what the kernel would have covered.

    Args:
        kernel_size: (kh, kw) window, or None for global pooling.
    """

    def __init__(self, kernel_size: tuple[int, int] | None) -> None:
        super().__init__()
        self.kernel_size = (
            None if kernel_size is None else (int(kernel_size[0]), int(kernel_size[1]))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H', W'): (1, 1) when global, else H-kh+1, W-kw+1."""
        if self.kernel_size is None:
            return F.adaptive_avg_pool2d(x, 1)
        kh = min(self.kernel_size[0], x.shape[-2])
        kw = min(self.kernel_size[1], x.shape[-1])
        return F.avg_pool2d(x, kernel_size=(kh, kw), stride=1)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size or 'global'}, stride=1"


class ASPP(nn.Module):
    """Five parallel branches on one feature map, concatenated and projected.

    Branches in order (state-dict names ``convs.0`` .. ``convs.4``): 1x1 conv; three 3x3 convs
    with the given dilations; image pooling -> 1x1 conv with bias and no norm (detectron2) or
    without bias and with the norm (torchvision, ``pooling_norm=True``) -> activation ->
    bilinear resize to the feature size. Then a 1x1 projection of the concatenation and dropout
    (training only).

    Args:
        in_channels: channels of the input feature map.
        out_channels: channels of every branch and of the output.
        dilations: the three dilation rates of the 3x3 branches.
        norm: norm name for `get_norm` ("" adds a bias to the convolutions instead).
        activation: activation module, deep-copied into every branch.
        pool_kernel_size: image-pooling window (see `ImagePooling`), or None for global pooling.
        dropout: dropout probability after the projection, in training only.
        use_depthwise_separable_conv: make the 3x3 branches depthwise-separable.
        pooling_norm: normalise the image-pooling branch too (torchvision's ``ASPPPooling``;
            its batch statistics in training are over the batch only).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilations: list[int] | tuple[int, ...],
        *,
        norm: str,
        activation: nn.Module,
        pool_kernel_size: tuple[int, int] | None = None,
        dropout: float = 0.0,
        use_depthwise_separable_conv: bool = False,
        pooling_norm: bool = False,
    ) -> None:
        super().__init__()
        if len(dilations) != 3:
            raise ValueError(f"ASPP expects 3 dilations, got {len(dilations)}: {dilations}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dropout = dropout
        use_bias = norm == ""
        self.convs = nn.ModuleList()
        self.convs.append(
            Conv2d(
                in_channels,
                out_channels,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
                activation=copy.deepcopy(activation),
            )
        )
        c2_xavier_fill(self.convs[-1])
        for dilation in dilations:
            if use_depthwise_separable_conv:
                self.convs.append(
                    DepthwiseSeparableConv2d(
                        in_channels,
                        out_channels,
                        kernel_size=3,
                        padding=dilation,
                        dilation=dilation,
                        norm1=norm,
                        activation1=copy.deepcopy(activation),
                        norm2=norm,
                        activation2=copy.deepcopy(activation),
                    )
                )
            else:
                self.convs.append(
                    Conv2d(
                        in_channels,
                        out_channels,
                        kernel_size=3,
                        padding=dilation,
                        dilation=dilation,
                        bias=use_bias,
                        norm=get_norm(norm, out_channels),
                        activation=copy.deepcopy(activation),
                    )
                )
                c2_xavier_fill(self.convs[-1])
        # detectron2 has no norm after pooling: the map is 1x1 in training, so batch statistics
        # are over the batch alone (kept for checkpoint compatibility); torchvision has one.
        with_norm = pooling_norm and not use_bias
        pooling_conv = Conv2d(
            in_channels,
            out_channels,
            1,
            bias=not with_norm,
            norm=get_norm(norm, out_channels) if with_norm else None,
            activation=copy.deepcopy(activation),
        )
        c2_xavier_fill(pooling_conv)
        self.convs.append(nn.Sequential(ImagePooling(pool_kernel_size), pooling_conv))
        self.project = Conv2d(
            5 * out_channels,
            out_channels,
            kernel_size=1,
            bias=use_bias,
            norm=get_norm(norm, out_channels),
            activation=copy.deepcopy(activation),
        )
        c2_xavier_fill(self.project)

    @property
    def pool_kernel_size(self) -> tuple[int, int] | None:
        return self.convs[-1][0].kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H, W)."""
        size = x.shape[-2:]
        branches = [conv(x) for conv in self.convs]
        branches[-1] = F.interpolate(branches[-1], size=size, mode="bilinear", align_corners=False)
        out = self.project(torch.cat(branches, dim=1))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, training=self.training)
        return out
