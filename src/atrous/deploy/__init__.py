"""Deployment: BatchNorm folding, the fast inference path, export, bundles, exported-graph
runtimes and benchmarking."""

from .bundle import write_bundle
from .export import ExportableSegmentor, export_onnx, export_torchscript
from .fast import FastInferenceModel, fast_path_supported, optimize_for_inference
from .flops import count_flops, count_model_flops
from .fold_bn import fold_batchnorm
from .runtime import ExportedSegmentor, load_exported_model

__all__ = [
    "ExportableSegmentor",
    "ExportedSegmentor",
    "FastInferenceModel",
    "count_flops",
    "count_model_flops",
    "export_onnx",
    "export_torchscript",
    "fast_path_supported",
    "fold_batchnorm",
    "load_exported_model",
    "optimize_for_inference",
    "write_bundle",
]
