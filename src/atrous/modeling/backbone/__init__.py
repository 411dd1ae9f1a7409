"""Backbones."""

from .mobilenet import MobileNetV3
from .resnet import (
    BasicStem,
    BottleneckBlock,
    DeepLabStem,
    ResNet,
    blocks_per_stage,
    make_stage,
    stage_dilations,
)

__all__ = [
    "BasicStem",
    "BottleneckBlock",
    "DeepLabStem",
    "MobileNetV3",
    "ResNet",
    "blocks_per_stage",
    "make_stage",
    "stage_dilations",
]
