"""Deployment: BatchNorm folding, the fast inference path, export (ONNX, TorchScript, OpenVINO),
INT8 quantization, bundles, exported-graph runtimes and benchmarking.

The optional runtimes (onnx, onnxruntime, openvino, nncf) are imported only when used."""

from .bundle_writer import write_bundle
from .export import TraceableSegmentor, export_onnx, export_torchscript
from .fast import FastInferenceModel, fast_path_supported, optimize_for_inference
from .flops import count_flops, count_model_flops
from .fold_bn import fold_batchnorm
from .openvino import export_openvino
from .quantize import quantize_model
from .runtime import ExportedSegmentor, load_exported_model

__all__ = [
    "ExportedSegmentor",
    "FastInferenceModel",
    "TraceableSegmentor",
    "count_flops",
    "count_model_flops",
    "export_onnx",
    "export_openvino",
    "export_torchscript",
    "fast_path_supported",
    "fold_batchnorm",
    "load_exported_model",
    "optimize_for_inference",
    "quantize_model",
    "write_bundle",
]
