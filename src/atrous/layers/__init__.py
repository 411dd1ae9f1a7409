"""Building blocks: convolutions with norm/activation, normalisation layers, ASPP."""

from .aspp import ASPP, ImagePooling
from .conv import Conv2d, DepthwiseSeparableConv2d, c2_msra_fill, c2_xavier_fill
from .norm import FrozenBatchNorm2d, NaiveSyncBatchNorm, convert_sync_batchnorm, get_norm
from .shape_spec import ShapeSpec

__all__ = [
    "ASPP",
    "Conv2d",
    "DepthwiseSeparableConv2d",
    "FrozenBatchNorm2d",
    "ImagePooling",
    "NaiveSyncBatchNorm",
    "ShapeSpec",
    "c2_msra_fill",
    "c2_xavier_fill",
    "convert_sync_batchnorm",
    "get_norm",
]
