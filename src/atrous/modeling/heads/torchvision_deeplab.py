"""torchvision's DeepLabHead: ASPP, then a 3x3 conv + norm + ReLU, then a 1x1 classifier.

The head of torchvision's ``deeplabv3_resnet50``, ``deeplabv3_resnet101`` and
``deeplabv3_mobilenet_v3_large``. Its ASPP differs from detectron2's: the image-pooling branch
has a norm and no bias, pooling is always global, and a 3x3 conv follows the projection. The
segmentor resizes its logits to the input size in one bilinear step (`SemanticSegmentor` with
``logits_at_input_size=True``), as torchvision's ``DeepLabV3.forward`` does.
"""

from __future__ import annotations

import torch
from torch import nn

from ...layers import ASPP, Conv2d, ShapeSpec, c2_xavier_fill, get_norm
from .deeplabv3 import predictor_conv

__all__ = ["TorchvisionDeepLabHead"]


class TorchvisionDeepLabHead(nn.Module):
    """features -> logits at the feature's stride (the segmentor resizes them to the input).

    State-dict names: ``aspp.*`` (torchvision's ``classifier.0``), ``conv`` with ``conv.norm``
    (``classifier.1`` and ``classifier.2``), ``predictor`` (``classifier.4``).

    Args:
        input_shape: the one backbone feature it reads, e.g. ``{"res5": ShapeSpec(2048, 8)}``.
        aspp: the ASPP module (torchvision's: ``pooling_norm=True``, global pooling, dropout 0.5).
        num_classes: number of output classes.
        norm: norm name of the 3x3 conv.
    """

    def __init__(
        self, *, input_shape: dict[str, ShapeSpec], aspp: ASPP, num_classes: int, norm: str = "BN"
    ) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"TorchvisionDeepLabHead reads one feature, got {list(input_shape)}.")
        ((self.in_feature, shape),) = input_shape.items()
        self.output_stride = shape.stride
        self.aspp = aspp
        channels = aspp.out_channels
        self.conv = Conv2d(
            channels,
            channels,
            kernel_size=3,
            padding=1,
            bias=not norm,
            norm=get_norm(norm, channels),
            activation=nn.ReLU(),
        )
        c2_xavier_fill(self.conv)
        self.predictor = predictor_conv(channels, num_classes)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """{in_feature: (N, C, h, w)} -> (N, num_classes, h, w) logits."""
        return self.predictor(self.conv(self.aspp(features[self.in_feature])))
