"""Export a segmentor to ONNX or TorchScript with dynamic batch size, height and width.

The exported graph takes what a deployment has at hand, an image batch in the model's
INPUT.FORMAT channel order on the 0-255 scale, and returns logits at the input resolution:

    images: float32 (N, 3, H, W)  ->  logits: float32 (N, num_classes, H, W)

Normalisation and the final crop of the head's stride-rounded output are part of the graph, so
``logits.argmax(1)`` is the segmentation. This equals ``model([{"image": img}])[0]["sem_seg"]`` of
the PyTorch model for each single image (a single image is never padded).

With ``end_to_end=True`` the graph is instead a whole deployment in one file, taking images as
they are stored and returning the segmentation and its confidence:

    image: uint8 (N, H, W, 3) RGB  ->  labels: int64 (N, H, W), confidence: float32 (N, H, W)

The channel swap to INPUT.FORMAT, the normalisation, the argmax and the max softmax probability
are inside. Like the logits graph it predicts at the size it is given: the test-time
ResizeShortestEdge (INPUT.MIN_SIZE_TEST) of `atrous.inference.Predictor` is not part of it.
Its files carry the metadata entry ``atrous_graph: end_to_end`` (`END_TO_END_GRAPH`); files of
the logits graph have no ``atrous_graph`` entry.

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
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..utils.file_io import current_umask
from ..utils.version import version_metadata

__all__ = [
    "END_TO_END_GRAPH",
    "TORCHSCRIPT_METADATA",
    "EndToEndSegmentor",
    "TraceableSegmentor",
    "export_metadata",
    "export_onnx",
    "export_torchscript",
    "label_metadata",
    "min_input_size",
]

# Name of the TorchScript extra file holding the JSON metadata.
TORCHSCRIPT_METADATA = "atrous_metadata.json"

# The ``atrous_graph`` metadata entry of end-to-end files (logits files have none).
END_TO_END_GRAPH = "end_to_end"


class TraceableSegmentor(nn.Module):
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


class EndToEndSegmentor(nn.Module):
    """Stored images in, segmentation out: the graph of ``export_onnx(..., end_to_end=True)``.

    Args:
        model: a segmentor (`atrous.modeling.build_model`), put in eval mode.
        input_format: the model's INPUT.FORMAT, "RGB" or "BGR" (the segmentor does not know
            it: its config does).
    """

    def __init__(self, model: nn.Module, *, input_format: str) -> None:
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"input_format (INPUT.FORMAT) must be 'RGB' or 'BGR', got {input_format!r}"
            )
        self.segmentor = TraceableSegmentor(model)
        self.input_format = input_format

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, H, W, 3) uint8 RGB -> labels (N, H, W) int64, confidence (N, H, W) float32.

        ``labels`` is the argmax of the logits (the lowest class id on an exact tie, as
        ``torch.argmax``), ``confidence`` its softmax probability.
        """
        # A contiguous NCHW copy: a permuted (channels-last strided) input would make the
        # convolutions' memory-format choice depend on the batch and image sizes, which
        # torch.export then refuses to keep dynamic.
        x = image.permute(0, 3, 1, 2).contiguous().float()
        if self.input_format == "BGR":
            x = x.flip(1)
        logits = self.segmentor(x)
        top, labels = logits.max(dim=1)
        # The largest softmax probability is exp(0) / sum(exp(logits - max)): no exponential of a
        # large logit can overflow and the full probability tensor is never formed.
        confidence = 1.0 / torch.exp(logits - top.unsqueeze(1)).sum(dim=1)
        return labels, confidence


def label_metadata(
    classes: Sequence[str], colors: Sequence[Sequence[int]] | None = None
) -> dict[str, str]:
    """Metadata entries naming what the labels mean, so a deployment can label its outputs.

    Returns:
        ``{"atrous_classes": JSON list of names, "atrous_colors": JSON list of [r, g, b]}``
        (colours only when given), for the `metadata` argument of the exporters.
    """
    entries = {"atrous_classes": json.dumps([str(c) for c in classes])}
    if colors is not None:
        if len(colors) != len(classes):
            raise ValueError(f"{len(classes)} class names but {len(colors)} colours")
        entries["atrous_colors"] = json.dumps([[int(v) for v in c] for c in colors])
    return entries


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
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def export_metadata(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The version stamp plus `extra`, as the string -> string map every export format takes."""
    metadata = {**version_metadata(), **dict(extra or {})}
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"export metadata must map strings to strings; not so for {bad}")
    return metadata


def _sample_input(
    model: nn.Module, sample_size: tuple[int, int] | None, *, end_to_end: bool = False
) -> torch.Tensor:
    if sample_size is None:
        low = min_input_size(model)
        # A size above the minimum and not a multiple of the stride keeps the exporter from
        # specialising on the sample's shape.
        sample_size = (max(low[0], 64) + 32, max(low[1], 64) + 64)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1, 3, *sample_size), generator=generator)
    if end_to_end:
        return images.to(torch.uint8).permute(0, 2, 3, 1).contiguous().to(device)
    return images.float().to(device)


def _graph(
    model: nn.Module, *, end_to_end: bool, input_format: str | None
) -> tuple[nn.Module, dict[str, str]]:
    """The module to export and the metadata entries saying what it is."""
    if not end_to_end:
        # Files of the logits graph carry no ``atrous_graph`` entry, as before it existed.
        return TraceableSegmentor(model).eval(), {}
    if input_format is None:
        raise ValueError(
            "an end-to-end export needs input_format: the model's INPUT.FORMAT ('RGB' or 'BGR')"
        )
    wrapper = EndToEndSegmentor(model, input_format=input_format).eval()
    return wrapper, {"atrous_graph": END_TO_END_GRAPH, "atrous_model_input_format": input_format}


def export_onnx(
    model: nn.Module,
    output: str | os.PathLike,
    *,
    sample_size: tuple[int, int] | None = None,
    opset_version: int = 18,
    metadata: Mapping[str, str] | None = None,
    end_to_end: bool = False,
    input_format: str | None = None,
) -> Path:
    """Write `model` as an ONNX file with dynamic batch, height and width.

    Uses the torch.export-based exporter (`dynamo=True`); the weights are stored inside the file
    (no external data), which is written atomically.

    Args:
        model: a segmentor; it is exported in eval mode, on its current device, in float32.
        output: path of the .onnx file.
        sample_size: (H, W) of the example input used for tracing; any valid size works.
        opset_version: ONNX opset.
        metadata: string entries for the model's ``metadata_props``, next to the version stamp
            and ``atrous_graph`` (e.g. `label_metadata`).
        end_to_end: export the `EndToEndSegmentor` graph instead of the logits graph.
        input_format: the model's INPUT.FORMAT; required with `end_to_end`.

    Returns:
        The path written. Graph input ``images`` (N, 3, H, W) float32, output ``logits``; with
        `end_to_end`, input ``image`` (N, H, W, 3) uint8 RGB, outputs ``labels`` (N, H, W)
        int64 and ``confidence`` (N, H, W) float32.
    """
    wrapper, kind = _graph(model, end_to_end=end_to_end, input_format=input_format)
    props = export_metadata({**dict(metadata or {}), **kind})
    sample = _sample_input(model, sample_size, end_to_end=end_to_end)
    min_h, min_w = min_input_size(model)
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = torch.export.Dim("height", min=max(min_h, 2), max=16384)
    width = torch.export.Dim("width", min=max(min_w, 2), max=16384)
    if end_to_end:
        input_name, output_names = "image", ["labels", "confidence"]
        dims = {0: batch, 1: height, 2: width}
    else:
        input_name, output_names = "images", ["logits"]
        dims = {0: batch, 2: height, 3: width}
    with _atomic_path(output) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (sample,),
            dynamo=True,
            dynamic_shapes={input_name: dims},
            input_names=[input_name],
            output_names=output_names,
            opset_version=opset_version,
            external_data=False,
        )
        program.model.metadata_props.update(props)
        if end_to_end:
            # The exporter names the output sizes after the stride-rounded crop
            # ("Min(height, 4*(...))"); they are the input's, and saying so lets shape
            # inference and viewers see outputs at the input size.
            image_dims = list(program.model.graph.inputs[0].shape)[:3]
            for value in program.model.graph.outputs:
                value.shape = type(value.shape)(image_dims)
        program.save(tmp, external_data=False)
    return Path(output)


def export_torchscript(
    model: nn.Module,
    output: str | os.PathLike,
    *,
    sample_size: tuple[int, int] | None = None,
    metadata: Mapping[str, str] | None = None,
    end_to_end: bool = False,
    input_format: str | None = None,
) -> Path:
    """Write `model` as a TorchScript file (``torch.jit.load`` -> module(images) -> logits).

    Traced, so sizes computed from the input (interpolation targets, the final crop) stay
    dynamic; the same contract as `export_onnx`.

    Args:
        model: a segmentor; it is traced in eval mode, on its current device, in float32.
        output: path of the .pt/.ts file, written atomically.
        sample_size: (H, W) of the example input used for tracing.
        metadata: string entries for the ``atrous_metadata.json`` extra file, next to the
            version stamp and ``atrous_graph``.
        end_to_end: trace the `EndToEndSegmentor` (module(image) -> (labels, confidence)).
        input_format: the model's INPUT.FORMAT; required with `end_to_end`.

    Returns:
        The path written.
    """
    wrapper, kind = _graph(model, end_to_end=end_to_end, input_format=input_format)
    props = export_metadata({**dict(metadata or {}), **kind})
    extra_files = {TORCHSCRIPT_METADATA: json.dumps(props, sort_keys=True)}
    sample = _sample_input(model, sample_size, end_to_end=end_to_end)
    with _atomic_path(output) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, (sample,), check_trace=False)
        traced = torch.jit.freeze(traced.eval())
        torch.jit.save(traced, str(tmp), _extra_files=extra_files)
    return Path(output)
