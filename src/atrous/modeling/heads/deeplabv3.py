"""DeepLabV3 head: ASPP on the last backbone feature, then a 1x1 classifier."""

from __future__ import annotations

import torch
from torch import nn

from ...layers import ASPP, ShapeSpec

__all__ = ["DeepLabV3Head", "predictor_conv"]


def predictor_conv(in_channels: int, num_classes: int) -> nn.Conv2d:
    """The final 1x1 classifier, initialised N(0, 0.001) with zero bias as in the original."""
    predictor = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    nn.init.normal_(predictor.weight, 0, 0.001)
    nn.init.constant_(predictor.bias, 0)
    return predictor


class DeepLabV3Head(nn.Module):
    """features -> logits at the feature's stride (the segmentor upsamples them).

    Args:
        input_shape: the one backbone feature it reads, e.g. ``{"res5": ShapeSpec(2048, 16)}``.
        aspp: the ASPP module applied to that feature (``aspp.out_channels`` channels out).
        num_classes: number of output classes.
    """

    def __init__(self, *, input_shape: dict[str, ShapeSpec], aspp: ASPP, num_classes: int) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"DeepLabV3Head reads one feature, got {list(input_shape)}.")
        ((self.in_feature, shape),) = input_shape.items()
        self.output_stride = shape.stride
        self.aspp = aspp
        self.predictor = predictor_conv(aspp.out_channels, num_classes)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """{in_feature: (N, C, h, w)} -> (N, num_classes, h, w) logits."""
        return self.predictor(self.aspp(features[self.in_feature]))
