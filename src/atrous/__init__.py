"""atrous: DeepLabV3 and DeepLabV3+ semantic segmentation in pure PyTorch.

A drop-in for detectron2's ``projects/DeepLab``: the same configs, checkpoints and numbers.
"""

__version__ = "0.1.0"
