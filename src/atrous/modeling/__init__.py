"""Models: ResNet backbones, DeepLabV3 / DeepLabV3+ heads, losses and the segmentor."""

from .build import aspp_pool_kernel_size, build_backbone, build_model, build_sem_seg_head
from .segmentor import SemanticSegmentor, sem_seg_postprocess

__all__ = [
    "SemanticSegmentor",
    "aspp_pool_kernel_size",
    "build_backbone",
    "build_model",
    "build_sem_seg_head",
    "sem_seg_postprocess",
]
