"""Exported graphs as models: an ONNX or OpenVINO file behind the segmentor's inference contract.

`ExportedSegmentor` runs a file written by ``atrous export`` (``.onnx`` through ONNX Runtime,
``.xml`` + ``.bin`` through OpenVINO; INT8 files from ``atrous quantize`` are such files too) and
is called exactly like the PyTorch segmentor at inference::

    model([{"image": (3, H, W) uint8, "height": h, "width": w}, ...])
    -> [{"sem_seg": (num_classes, h, w) float32 logits}, ...]

so `atrous.evaluation.evaluate_datasets`, `atrous.inference.Predictor`, test-time augmentation
and sliding windows use it unchanged, and every accuracy figure of an exported file comes from
the same code path as the PyTorch model's.

The graph computes the normalisation and the head (``images`` float32 (N, 3, H, W) -> ``logits``
(N, C, H, W), see `atrous.deploy.export`); the post-processing around it (padding a batch, the
crop and the bilinear resize to ``height`` x ``width``) is the segmentor's own
`sem_seg_postprocess`. Images of different sizes in one batch are padded with the pixel mean
when it is known (that is the segmentor's zero padding after normalisation), and otherwise run
one at a time.

It runs on the CPU (``CPUExecutionProvider``; OpenVINO's ``"CPU"`` device), in eval mode only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint.errors import CheckpointError
from ..modeling.segmentor import check_batch_output_sizes, sem_seg_postprocess
from ..utils.extras import MissingExtraError

__all__ = [
    "EXPORTED_SUFFIXES",
    "ExportedModelError",
    "ExportedSegmentor",
    "MissingRuntimeError",
    "build_exported_model",
    "exported_backend",
    "load_exported_model",
]

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# What `export_onnx(..., end_to_end=True)` graphs take and return.
END_TO_END_INPUT = "image"
END_TO_END_OUTPUTS = ("labels", "confidence")

# file suffix -> backend that runs it
EXPORTED_SUFFIXES = {".onnx": "onnxruntime", ".xml": "openvino"}
_EXTRAS = {"onnxruntime": "atrous[export]", "openvino": "atrous[openvino]"}
# OpenVINO's names for the precisions a user asks for, and back
_OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_OUR_PRECISIONS = {v: k for k, v in _OV_PRECISIONS.items()}


class ExportedModelError(CheckpointError):
    """An exported graph file is missing, unreadable, or not a graph atrous exported."""


class MissingRuntimeError(MissingExtraError):
    """The runtime an exported file needs (onnxruntime, openvino) is not installed."""


def exported_backend(path: str | os.PathLike[str]) -> str:
    """``"onnxruntime"`` for a ``.onnx`` file, ``"openvino"`` for a ``.xml`` file.

    Raises:
        ExportedModelError: another suffix.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in EXPORTED_SUFFIXES:
        raise ExportedModelError(
            f"{path}: not an exported graph; atrous runs .onnx files (ONNX Runtime) and .xml "
            "files with their .bin (OpenVINO IR)."
        )
    return EXPORTED_SUFFIXES[suffix]


def _import_runtime(backend: str, path: Path) -> Any:
    try:
        if backend == "onnxruntime":
            import onnxruntime as module
        else:
            from .openvino import import_openvino

            # Without OpenVINO's telemetry (see atrous.deploy.openvino).
            module = import_openvino("openvino")
    except ImportError as error:
        raise MissingRuntimeError(
            f"running {path.name} needs {backend}, which is not installed: "
            f"pip install '{_EXTRAS[backend]}'."
        ) from error
    return module


def _describe(inputs: Sequence[str], outputs: Sequence[str]) -> str:
    return f"inputs {list(inputs)} and outputs {list(outputs)}"


def _check_signature(path: Path, inputs: list[str], outputs: list[str]) -> None:
    """Refuse a graph that does not map ``images`` to ``logits``, saying what it is instead."""
    if inputs == [INPUT_NAME] and outputs[:1] == [OUTPUT_NAME]:
        return
    if END_TO_END_INPUT in inputs and set(END_TO_END_OUTPUTS) <= set(outputs):
        raise ExportedModelError(
            f"{path} is an end-to-end graph ({_describe(inputs, outputs)}): it returns label "
            "maps, not the logits that evaluation, test-time augmentation and sliding windows "
            "need. Export the model without --end-to-end to evaluate or predict with it."
        )
    raise ExportedModelError(
        f"{path} is not a graph atrous exported: it has {_describe(inputs, outputs)}, where "
        f"`atrous export` writes input '{INPUT_NAME}' float32 (N, 3, H, W) and output "
        f"'{OUTPUT_NAME}' (N, num_classes, H, W)."
    )


class _OnnxRuntimeGraph:
    """An ONNX Runtime CPU session over a ``.onnx`` file."""

    def __init__(self, path: Path, *, threads: int | None, precision: str) -> None:
        ort = _import_runtime("onnxruntime", path)
        if precision != "fp32":
            raise ValueError(
                f"{path.name}: ONNX Runtime's CPU provider runs the graph as it is stored; "
                f"inference precision {precision!r} applies to OpenVINO (.xml) files only."
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise ExportedModelError(f"{path} cannot be read by ONNX Runtime: {error}") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        _check_signature(path, inputs, outputs)
        self.input_type = self.session.get_inputs()[0].type
        channels = self.session.get_outputs()[0].shape[1:2]
        self.num_classes = channels[0] if channels and isinstance(channels[0], int) else None
        self.runtime = f"onnxruntime {ort.__version__}"
        self.precision = "fp32"

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


class _OpenVinoGraph:
    """An OpenVINO model compiled for the ``"CPU"`` device from a ``.xml`` (+ ``.bin``) file."""

    def __init__(self, path: Path, *, threads: int | None, precision: str) -> None:
        ov = _import_runtime("openvino", path)
        if precision not in _OV_PRECISIONS:
            raise ValueError(
                f"inference precision {precision!r}: use one of {', '.join(_OV_PRECISIONS)}."
            )
        if not path.with_suffix(".bin").is_file():
            raise ExportedModelError(
                f"{path.with_suffix('.bin')} is missing: an OpenVINO IR is the .xml file and the "
                ".bin file of its weights, side by side."
            )
        from .openvino import openvino_core

        # The process's one Core: Cores that end out of order crash the process (see there).
        core = openvino_core()
        try:
            model = core.read_model(str(path))
        except Exception as error:  # openvino raises RuntimeError subclasses of its own
            raise ExportedModelError(f"{path} cannot be read by OpenVINO: {error}") from None
        inputs = [i.get_any_name() for i in model.inputs]
        outputs = [o.get_any_name() for o in model.outputs]
        _check_signature(path, inputs, outputs)
        if _stores_fp16_weights(model):
            logger.warning(
                "%s stores its weights in float16 (openvino.save_model compresses them unless "
                "compress_to_fp16=False): its logits differ from the float32 model's by about "
                "1e-1.",
                path,
            )
        channels = model.outputs[0].get_partial_shape()[1]
        self.num_classes = channels.get_length() if channels.is_static else None
        # Always explicit: OpenVINO's CPU default is bf16 wherever the CPU has bf16 instructions
        # (avx512_bf16, AMX), which would make a "float32" figure depend on the machine.
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _OV_PRECISIONS[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as error:
            raise ExportedModelError(
                f"OpenVINO cannot compile {path} for the CPU with {config}: {error}"
            ) from None
        self.request = self.compiled.create_infer_request()
        self.input_type = "tensor(float)"
        # "2026.4.1-22982-e213a147257-releases/2026/4" -> "2026.4.1"
        self.runtime = f"openvino {ov.get_version().split('-')[0]}"
        chosen = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = _OUR_PRECISIONS.get(chosen, chosen)

    def run(self, images: np.ndarray) -> np.ndarray:
        self.request.infer({INPUT_NAME: images})
        # The request reuses its output buffer on the next call: copy.
        return np.array(self.request.get_output_tensor(0).data, copy=True)


def _stores_fp16_weights(model: Any) -> bool:
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() in (
            "f16",
            "float16",
        ):
            return True
    return False


class ExportedSegmentor(nn.Module):
    """An exported graph with the segmentor's inference contract (see the module docstring).

    An `nn.Module` without parameters, so that `eval()`, ``training`` and the wrappers of
    `atrous.inference` treat it like the PyTorch model; it cannot be put in training mode.

    Args:
        graph: the runtime session (built by `load_exported_model`).
        path: the file it was read from.
        backend: ``"onnxruntime"`` or ``"openvino"``.
        pixel_mean: per-channel mean (0-255, INPUT.FORMAT order) used to pad a batch of images
            of different sizes as the segmentor does; None runs such images one at a time.
        max_output_bytes: refuse an image whose logits at its output size would take more
            memory than this (`check_batch_output_sizes`, TEST.MAX_OUTPUT_MB); 0: no limit.

    Attributes:
        num_classes: channels of the graph's logits (None if the graph leaves them dynamic).
        runtime: e.g. ``"onnxruntime 1.32.0"``.
        precision: the inference precision the runtime compiled for (``"fp32"``, ``"bf16"``).
    """

    def __init__(
        self,
        *,
        graph: _OnnxRuntimeGraph | _OpenVinoGraph,
        path: Path,
        backend: str,
        pixel_mean: Sequence[float] | None = None,
        max_output_bytes: int = 0,
    ) -> None:
        super().__init__()
        self.graph = graph
        self.path = Path(path)
        self.backend = backend
        self.num_classes = graph.num_classes
        self.runtime = graph.runtime
        self.precision = graph.precision
        self.pixel_mean = None if pixel_mean is None else tuple(float(v) for v in pixel_mean)
        self.max_output_bytes = int(max_output_bytes)
        self.training = False

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def train(self, mode: bool = True) -> ExportedSegmentor:
        if mode:
            raise RuntimeError(f"{self.path} is an exported graph: it runs inference only.")
        return super().train(False)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, runtime={self.runtime!r}, precision={self.precision!r}"

    def _batch(self, images: list[torch.Tensor]) -> np.ndarray:
        """(N, 3, H_max, W_max) float32, padded bottom/right with the pixel mean."""
        max_h = max(int(x.shape[-2]) for x in images)
        max_w = max(int(x.shape[-1]) for x in images)
        if all(tuple(x.shape[-2:]) == (max_h, max_w) for x in images):
            return torch.stack([x.cpu().float() for x in images]).numpy()
        assert self.pixel_mean is not None
        fill = torch.tensor(self.pixel_mean, dtype=torch.float32).view(1, -1, 1, 1)
        batch = fill.expand(len(images), -1, max_h, max_w).contiguous()
        for i, x in enumerate(images):
            batch[i, :, : x.shape[-2], : x.shape[-1]] = x.cpu().float()
        return batch.numpy()

    def _run(self, images: list[torch.Tensor]) -> np.ndarray:
        batch = self._batch(images)
        try:
            return self.graph.run(batch)
        except Exception as error:
            # Typically an input below the fixed ASPP pooling window of crop-trained models.
            raise RuntimeError(
                f"{self.runtime} failed on a {tuple(batch.shape)} input batch of {self.path}: "
                f"{error}\nGraphs of models whose ASPP pools over the training crop "
                "(INPUT.CROP.SIZE) take only inputs at least that size."
            ) from error

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
        """Args/returns as `SemanticSegmentor` at inference: ``sem_seg`` (C, height, width)."""
        if self.num_classes is not None:
            check_batch_output_sizes(
                batched_inputs, num_classes=self.num_classes, max_bytes=self.max_output_bytes
            )
        images = [x["image"] for x in batched_inputs]
        sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in images]
        if len(set(sizes)) == 1 or self.pixel_mean is not None:
            logits = list(torch.from_numpy(self._run(images)))
        else:
            logits = [torch.from_numpy(self._run([x]))[0] for x in images]
        results = []
        for result, inputs, size in zip(logits, batched_inputs, sizes):
            height = int(inputs.get("height", size[0]))
            width = int(inputs.get("width", size[1]))
            results.append({"sem_seg": sem_seg_postprocess(result, size, height, width)})
        return results


def load_exported_model(
    path: str | os.PathLike[str],
    *,
    threads: int | None = None,
    precision: str = "fp32",
    pixel_mean: Sequence[float] | None = None,
    max_output_bytes: int = 0,
) -> ExportedSegmentor:
    """Open an exported graph file with the runtime its suffix names.

    Args:
        path: a ``.onnx`` file (ONNX Runtime) or a ``.xml`` file with its ``.bin`` (OpenVINO).
        threads: intra-op threads of the runtime; None: the runtime's default.
        precision: OpenVINO's inference precision (``"fp32"``, ``"bf16"``, ``"fp16"``), always
            set as ``INFERENCE_PRECISION_HINT`` (OpenVINO's own default depends on the CPU).
            The layers of an INT8 file that were quantized run in INT8 whatever this says.
            ONNX files run as stored and take only ``"fp32"``.
        pixel_mean, max_output_bytes: see `ExportedSegmentor`.

    Raises:
        ExportedModelError: the file is missing, has another suffix, cannot be read, or is not
            an ``images`` -> ``logits`` graph (e.g. an end-to-end graph).
        MissingRuntimeError: its runtime is not installed (the message names the extra).
        ValueError: a precision the backend does not take.
    """
    path = Path(path)
    backend = exported_backend(path)
    if not path.is_file():
        raise ExportedModelError(f"exported model {path} does not exist.")
    graph_type = _OnnxRuntimeGraph if backend == "onnxruntime" else _OpenVinoGraph
    graph = graph_type(path, threads=threads, precision=precision)
    logger.info("Running %s with %s (%s)", path, graph.runtime, graph.precision)
    return ExportedSegmentor(
        graph=graph,
        path=path,
        backend=backend,
        pixel_mean=pixel_mean,
        max_output_bytes=max_output_bytes,
    )


def build_exported_model(
    cfg: Any,
    path: str | os.PathLike[str],
    *,
    threads: int | None = None,
    precision: str = "fp32",
) -> ExportedSegmentor:
    """`load_exported_model` for the model `cfg` describes, checked against it.

    The config gives the padding value (MODEL.PIXEL_MEAN) and the output budget
    (TEST.MAX_OUTPUT_MB); its TEST.AUG and TEST.SLIDING_WINDOW wrap the result as they wrap the
    PyTorch model (`atrous.inference.build_inference_model`), but TEST.FAST, which rewrites a
    PyTorch model, cannot apply to a graph and is refused.

    Raises:
        atrous.config.ConfigError: TEST.FAST.ENABLED, MODEL.DEVICE not the CPU, or the graph's
            class count differs from MODEL.SEM_SEG_HEAD.NUM_CLASSES.
        ExportedModelError, MissingRuntimeError: see `load_exported_model`.
    """
    from ..config import ConfigError
    from ..modeling import max_output_bytes

    if cfg.TEST.FAST.ENABLED:
        raise ConfigError(
            f"TEST.FAST.ENABLED rewrites the PyTorch model (bf16, channels_last, folded "
            f"BatchNorm) and cannot apply to the exported graph {path}; set TEST.FAST.ENABLED "
            "False (OpenVINO's bf16 is its inference precision instead)."
        )
    # "auto" is fine: the CPU is where graphs run; only an explicit GPU cannot be honoured.
    if str(cfg.MODEL.DEVICE).strip().startswith("cuda"):
        raise ConfigError(
            f"exported graphs run on the CPU; MODEL.DEVICE is {cfg.MODEL.DEVICE!r} (use "
            "--device cpu)."
        )
    model = load_exported_model(
        path,
        threads=threads,
        precision=precision,
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        max_output_bytes=max_output_bytes(cfg),
    )
    expected = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    if model.num_classes is not None and model.num_classes != expected:
        raise ConfigError(
            f"{path} predicts {model.num_classes} classes but MODEL.SEM_SEG_HEAD.NUM_CLASSES is "
            f"{expected}: the config does not describe this model."
        )
    return model
