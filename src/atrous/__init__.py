"""atrous: DeepLabV3 and DeepLabV3+ semantic segmentation in pure PyTorch.

A drop-in for detectron2's ``projects/DeepLab``: the same configs, checkpoints and numbers.
"""

from .utils.version import package_version as _package_version

__version__ = _package_version()
