"""DeepLabV3 head: ASPP on the last backbone feature, then a 1x1 classifier."""

from __future__ import annotations

import torch
from torch import nn

from ...layers import ASPP, ShapeSpec

__all__ = ["DeepLabV3Head"]


class DeepLabV3Head(nn.Module):
    """features -> logits at the feature's stride (the segmentor upsamples them).

    Args:
        input_shape: the one backbone feature it reads, e.g. ``{"res5": ShapeSpec(2048, 16)}``.
        num_classes: number of output classes.
        aspp_channels: channels of ASPP (also the classifier's input).
        aspp_dilations: dilations of the three 3x3 ASPP branches.
        aspp_dropout: dropout after ASPP in training.
        norm: norm name for ASPP.
        pool_kernel_size: ASPP image-pooling window (None: global), see `ImagePooling`.
        use_depthwise_separable_conv: depthwise-separable ASPP branches.
    """

    def __init__(
        self,
        *,
        input_shape: dict[str, ShapeSpec],
        num_classes: int,
        aspp_channels: int = 256,
        aspp_dilations: tuple[int, ...] | list[int] = (6, 12, 18),
        aspp_dropout: float = 0.1,
        norm: str = "BN",
        pool_kernel_size: tuple[int, int] | None = None,
        use_depthwise_separable_conv: bool = False,
    ) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"DeepLabV3Head reads one feature, got {list(input_shape)}.")
        ((self.in_feature, shape),) = input_shape.items()
        self.output_stride = shape.stride
        self.aspp = ASPP(
            shape.channels,
            aspp_channels,
            aspp_dilations,
            norm=norm,
            activation=nn.ReLU(),
            pool_kernel_size=pool_kernel_size,
            dropout=aspp_dropout,
            use_depthwise_separable_conv=use_depthwise_separable_conv,
        )
        self.predictor = nn.Conv2d(aspp_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, 0, 0.001)
        nn.init.constant_(self.predictor.bias, 0)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """{in_feature: (N, C, h, w)} -> (N, num_classes, h, w) logits."""
        return self.predictor(self.aspp(features[self.in_feature]))
