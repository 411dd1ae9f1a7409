"""Export a segmentor to ONNX or TorchScript with dynamic batch size, height and width.

The exported graph takes what a deployment has at hand, an image batch in the model's
INPUT.FORMAT channel order on the 0-255 scale, and returns logits at the input resolution:

    images: float32 (N, 3, H, W)  ->  logits: float32 (N, num_classes, H, W)

Normalisation and the final crop of the head's stride-rounded output are part of the graph, so
``logits.argmax(1)`` is the segmentation. This equals ``model([{"image": img}])[0]["sem_seg"]`` of
the PyTorch model for each single image (a single image is never padded).

The crop-dependent ASPP image pooling of the original (``AvgPool2d`` with a (32, 64) kernel and
stride 1 for the 512x1024 training crop) exports as a fixed-kernel average pool over a dynamic
feature map, so inputs must be at least the training crop size for those models (the exported
model then slides the window exactly as PyTorch does); globally pooled models take any size.

Both formats carry the version stamp (``atrous_version``, ``torch_version``) and any extra
string entries: as the ONNX model's ``metadata_props``, and as the TorchScript extra file
``atrous_metadata.json`` (``torch.jit.load(path, _extra_files={TORCHSCRIPT_METADATA: ""})``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..utils.version import version_metadata

__all__ = [
    "TORCHSCRIPT_METADATA",
    "ExportableSegmentor",
    "export_metadata",
    "export_onnx",
    "export_torchscript",
    "min_input_size",
]

# Name of the TorchScript extra file holding the JSON metadata.
TORCHSCRIPT_METADATA = "atrous_metadata.json"


class ExportableSegmentor(nn.Module):
    """Tensor-in, tensor-out wrapper of a segmentor for tracing and export.

    Args:
        model: a segmentor (`atrous.modeling.build_model`), put in eval mode.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float images, 0-255, INPUT.FORMAT order -> (N, C, H, W) float logits."""
        height, width = images.shape[-2], images.shape[-1]
        x = (images - self.model.pixel_mean) / self.model.pixel_std
        logits = self.model.logits(x)
        # The head's output is the input size rounded up to its stride; the segmentor's
        # post-processing crops it back to the image, and resizing to the same size is the
        # identity, so the crop is all that remains.
        return logits[:, :, :height, :width].float()


def min_input_size(model: nn.Module) -> tuple[int, int]:
    """Smallest (H, W) the exported graph accepts: the training crop for crop-dependent pooling.

    Smaller inputs would make the feature map smaller than the fixed pooling window, which
    PyTorch handles by pooling globally but a fixed-kernel ONNX AveragePool cannot.
    """
    kernel = None
    for module in model.modules():
        if type(module).__name__ == "ImagePooling" and getattr(module, "kernel_size", None):
            kernel = module.kernel_size
    if kernel is None:
        return (1, 1)
    stride = _output_stride(model)
    return (kernel[0] * stride, kernel[1] * stride)


def _output_stride(model: nn.Module) -> int:
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "output_shape"):
        strides = [spec.stride for spec in backbone.output_shape().values() if spec.stride]
        if strides:
            return max(strides)
    return 16


@contextlib.contextmanager
def _atomic_path(output: str | os.PathLike):
    """Yield a temporary path next to `output`; move it over `output` only on success."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def export_metadata(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The version stamp plus `extra`, as the string -> string map every export format takes."""
    metadata = {**version_metadata(), **dict(extra or {})}
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"export metadata must map strings to strings; not so for {bad}")
    return metadata


def _sample_input(model: nn.Module, sample_size: tuple[int, int] | None) -> torch.Tensor:
    if sample_size is None:
        low = min_input_size(model)
        # A size above the minimum and not a multiple of the stride keeps the exporter from
        # specialising on the sample's shape.
        sample_size = (max(low[0], 64) + 32, max(low[1], 64) + 64)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1, 3, *sample_size), generator=generator)
    return images.float().to(device)


def export_onnx(
    model: nn.Module,
    output: str | os.PathLike,
    *,
    sample_size: tuple[int, int] | None = None,
    opset_version: int = 18,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write `model` as an ONNX file with dynamic batch, height and width.

    Uses the torch.export-based exporter (`dynamo=True`); the weights are stored inside the file
    (no external data), which is written atomically.

    Args:
        model: a segmentor; it is exported in eval mode, on its current device, in float32.
        output: path of the .onnx file.
        sample_size: (H, W) of the example input used for tracing; any valid size works.
        opset_version: ONNX opset.
        metadata: string entries for the model's ``metadata_props``, next to the version stamp.

    Returns:
        The path written. Graph input ``images`` (N, 3, H, W) float32, output ``logits``.
    """
    props = export_metadata(metadata)
    wrapper = ExportableSegmentor(model).eval()
    sample = _sample_input(model, sample_size)
    min_h, min_w = min_input_size(model)
    dims = {
        0: torch.export.Dim("batch", min=1, max=1024),
        2: torch.export.Dim("height", min=max(min_h, 2), max=16384),
        3: torch.export.Dim("width", min=max(min_w, 2), max=16384),
    }
    with _atomic_path(output) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (sample,),
            dynamo=True,
            dynamic_shapes={"images": dims},
            input_names=["images"],
            output_names=["logits"],
            opset_version=opset_version,
            external_data=False,
        )
        program.model.metadata_props.update(props)
        program.save(tmp, external_data=False)
    return Path(output)


def export_torchscript(
    model: nn.Module,
    output: str | os.PathLike,
    *,
    sample_size: tuple[int, int] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write `model` as a TorchScript file (``torch.jit.load`` -> module(images) -> logits).

    Traced, so sizes computed from the input (interpolation targets, the final crop) stay
    dynamic; the same contract as `export_onnx`.

    Args:
        model: a segmentor; it is traced in eval mode, on its current device, in float32.
        output: path of the .pt/.ts file, written atomically.
        sample_size: (H, W) of the example input used for tracing.
        metadata: string entries for the ``atrous_metadata.json`` extra file, next to the
            version stamp.

    Returns:
        The path written.
    """
    extra_files = {TORCHSCRIPT_METADATA: json.dumps(export_metadata(metadata), sort_keys=True)}
    wrapper = ExportableSegmentor(model).eval()
    sample = _sample_input(model, sample_size)
    with _atomic_path(output) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, (sample,), check_trace=False)
        traced = torch.jit.freeze(traced.eval())
        torch.jit.save(traced, str(tmp), _extra_files=extra_files)
    return Path(output)
