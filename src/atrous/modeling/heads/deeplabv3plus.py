"""DeepLabV3+ head: ASPP on the coarsest feature, decoded top-down with projected finer features."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...layers import ASPP, Conv2d, DepthwiseSeparableConv2d, ShapeSpec, c2_xavier_fill, get_norm
from .deeplabv3 import predictor_conv

__all__ = ["DeepLabV3PlusHead"]


class DeepLabV3PlusHead(nn.Module):
    """features -> logits at the stride of the finest feature (the segmentor upsamples them).

    The coarsest feature goes through ASPP (``decoder.<name>.project_conv``). Going from coarse to
    fine, each finer feature is projected by a 1x1 conv (``decoder.<name>.project_conv``), the
    running decoder output is resized to it, the two are concatenated as
    ``[projection, decoder output]`` and fused by two 3x3 convs (``decoder.<name>.fuse_conv``).

    Args:
        input_shape: the backbone features it reads, e.g. res2 and res5.
        aspp: the ASPP module applied to the coarsest feature.
        project_channels: projection channels of every feature but the coarsest, fine to coarse.
        num_classes: number of output classes.
        decoder_channels: output channels of the fuse convs of every finer feature.
        norm: norm name for the projection and fuse convolutions.
        use_depthwise_separable_conv: one 5x5 depthwise-separable fuse conv instead of two 3x3
            convs.
    """

    def __init__(
        self,
        *,
        input_shape: dict[str, ShapeSpec],
        aspp: ASPP,
        project_channels: list[int] | tuple[int, ...],
        num_classes: int,
        decoder_channels: int = 256,
        norm: str = "BN",
        use_depthwise_separable_conv: bool = False,
    ) -> None:
        super().__init__()
        ordered = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in ordered]  # fine to coarse
        if len(project_channels) != len(self.in_features) - 1:
            raise ValueError(
                f"Expected {len(self.in_features) - 1} PROJECT_CHANNELS for features "
                f"{self.in_features}, got {list(project_channels)}."
            )
        self.output_stride = ordered[0][1].stride
        use_bias = norm == ""
        # Input channels of each fuse conv: its projection plus the coarser decoder output.
        coarser_channels = [decoder_channels] * (len(ordered) - 2) + [aspp.out_channels]
        self.decoder = nn.ModuleDict()
        for index, (name, shape) in enumerate(ordered):
            stage = nn.ModuleDict()
            if index == len(ordered) - 1:
                stage["project_conv"] = aspp
                stage["fuse_conv"] = None
            else:
                proj = project_channels[index]
                stage["project_conv"] = Conv2d(
                    shape.channels,
                    proj,
                    kernel_size=1,
                    bias=use_bias,
                    norm=get_norm(norm, proj),
                    activation=nn.ReLU(),
                )
                c2_xavier_fill(stage["project_conv"])
                stage["fuse_conv"] = self._fuse_conv(
                    proj + coarser_channels[index],
                    decoder_channels,
                    norm,
                    use_depthwise_separable_conv,
                )
            self.decoder[name] = stage
        self.predictor = predictor_conv(decoder_channels, num_classes)

    @staticmethod
    def _fuse_conv(in_channels: int, out_channels: int, norm: str, separable: bool) -> nn.Module:
        if separable:
            # One 5x5 depthwise-separable conv has the receptive field of two 3x3 convs.
            return DepthwiseSeparableConv2d(
                in_channels,
                out_channels,
                kernel_size=5,
                padding=2,
                norm1=norm,
                activation1=nn.ReLU(),
                norm2=norm,
                activation2=nn.ReLU(),
            )
        convs = []
        for c_in in (in_channels, out_channels):
            conv = Conv2d(
                c_in,
                out_channels,
                kernel_size=3,
                padding=1,
                bias=norm == "",
                norm=get_norm(norm, out_channels),
                activation=nn.ReLU(),
            )
            c2_xavier_fill(conv)
            convs.append(conv)
        return nn.Sequential(*convs)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """{name: (N, C_name, h_name, w_name)} -> (N, num_classes, h_finest, w_finest) logits."""
        y = None
        for name in reversed(self.in_features):
            stage = self.decoder[name]
            projected = stage["project_conv"](features[name])
            if y is None:
                y = projected
                continue
            y = F.interpolate(y, size=projected.shape[-2:], mode="bilinear", align_corners=False)
            y = stage["fuse_conv"](torch.cat([projected, y], dim=1))
        return self.predictor(y)
