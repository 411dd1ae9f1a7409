"""Models: ResNet backbones, DeepLabV3 / DeepLabV3+ heads, losses and the segmentor."""

from .build import (
    aspp_pool_kernel_size,
    build_backbone,
    build_model,
    build_sem_seg_head,
    max_output_bytes,
)
from .segmentor import (
    OutputTooLargeError,
    SemanticSegmentor,
    check_output_size,
    sem_seg_postprocess,
)

__all__ = [
    "OutputTooLargeError",
    "SemanticSegmentor",
    "aspp_pool_kernel_size",
    "build_backbone",
    "build_model",
    "build_sem_seg_head",
    "check_output_size",
    "max_output_bytes",
    "sem_seg_postprocess",
]
