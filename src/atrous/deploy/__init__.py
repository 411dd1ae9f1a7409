"""Deployment: BatchNorm folding, the fast inference path, export, bundles and benchmarking."""

from .bundle import write_bundle
from .export import ExportableSegmentor, export_onnx, export_torchscript
from .fast import FastInferenceModel, fast_path_supported, optimize_for_inference
from .flops import count_flops, count_model_flops
from .fold_bn import fold_batchnorm

__all__ = [
    "ExportableSegmentor",
    "FastInferenceModel",
    "count_flops",
    "count_model_flops",
    "export_onnx",
    "export_torchscript",
    "fast_path_supported",
    "fold_batchnorm",
    "optimize_for_inference",
    "write_bundle",
]
