"""Segmentation heads: features -> logits."""

from .deeplabv3 import DeepLabV3Head
from .deeplabv3plus import DeepLabV3PlusHead
from .torchvision_deeplab import TorchvisionDeepLabHead

__all__ = ["DeepLabV3Head", "DeepLabV3PlusHead", "TorchvisionDeepLabHead"]
