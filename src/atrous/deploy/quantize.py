"""Static INT8 post-training quantization of an exported segmentor, for OpenVINO or ONNX Runtime.

`quantize_model` exports the float32 model with `atrous.deploy.export.export_onnx` (the graph
contract is unchanged: float32 images (N, 3, H, W) in INPUT.FORMAT order on the 0-255 scale ->
float32 logits (N, C, H, W)), then quantizes it with the runtime's own tool; nothing here
computes a scale:

- ``openvino``: ``nncf.quantize`` on the OpenVINO model, preset PERFORMANCE by default
  (symmetric int8 weights per channel and symmetric activations: the CPU plugin's cheapest int8
  kernels, no zero-point terms), fast bias correction; MIXED (asymmetric activations) is
  ``preset="mixed"``. Saved as IR; the layers kept in float keep float32 weights.
- ``onnxruntime``: ``onnxruntime.quantization.quantize_static`` in QDQ format: per-channel
  symmetric int8 weights, asymmetric uint8 activations (the U8S8 combination ONNX Runtime's x86
  kernels run with VNNI), MinMax calibration. ONNX Runtime fuses each DequantizeLinear ->
  Conv -> QuantizeLinear into an integer convolution when the session is created.

Calibration (`CalibrationImages`) reads N images of a training split with the project's dataset
code and maps them with the TEST-time pipeline (ResizeShortestEdge(MIN_SIZE_TEST,
MAX_SIZE_TEST), INPUT.FORMAT channel order, 0-255), so the activation ranges are those of what the
exported graph receives at test time. The N images are spread evenly over the split.

Layers kept in float32 (`DEFAULT_KEEP_FLOAT`): only the final predictor, the 1x1 convolution
from the decoder to the class logits (a small share of the FLOPs). Every other convolution runs
in int8 (OpenVINO: 64 of the quickstart model's 65 convolutions execute as u8; ONNX Runtime:
64 QLinearConv and the residual additions as QLinearAdd). Measured on the trained quickstart
model (synthetic-val, 50 images; docs/benchmarks.md), against float32 (mIoU 56.95):

- ONNX Runtime, all int8: 99.79% pixel agreement, mIoU -0.13; predictor in float: 99.83%,
  -0.05. An 8-bit grid over the logit range is too coarse for the small margins between the two
  best classes at object boundaries; in float the predictor keeps them.
- OpenVINO (PERFORMANCE): 99.71%, mIoU +0.10 with the predictor in float; its quantizing made no
  difference there (MIXED: 99.67% either way, worst image 98.0% against 98.7%).
- The image-pooling branch (``"image_pooling"``: average pool + 1x1 conv) in float changed
  nothing on either backend (within 0.01%), so it is quantized; keep it with
  ``keep_float=("predictor", "image_pooling")`` if a model of yours says otherwise.
- 20, 100 or 300 calibration images gave the same agreement within 0.02%;
  `DEFAULT_CALIBRATION_IMAGES` is 100.

Needs ``atrous[openvino]`` (openvino + nncf) or ``atrous[export]`` (onnxruntime); a missing one
is an ImportError naming the extra.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..checkpoint.bundle_reader import CONFIG_FILE
from ..utils.extras import MissingExtraError
from ..utils.file_io import publish_folder, staging_dir
from .export import export_metadata, export_onnx, min_input_size

__all__ = [
    "BACKENDS",
    "DEFAULT_CALIBRATION_IMAGES",
    "DEFAULT_KEEP_FLOAT",
    "KEEP_FLOAT_CHOICES",
    "CalibrationImages",
    "QuantizationResult",
    "check_output_folder",
    "float_module_names",
    "onnx_nodes_of_modules",
    "quantize_model",
    "require_backend",
    "write_quantized_folder",
]

logger = logging.getLogger(__name__)

BACKENDS = ("openvino", "onnxruntime")
KEEP_FLOAT_CHOICES = ("predictor", "image_pooling")
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ("predictor",)
DEFAULT_CALIBRATION_IMAGES = 100
# What `write_quantized_folder` writes.
MODEL_FILES = {"openvino": "model_int8.xml", "onnxruntime": "model_int8.onnx"}
INFO_FILE = "quantization.json"
_EXTRA = {"openvino": "atrous[openvino]", "onnxruntime": "atrous[export]"}
_MODULES = {"openvino": ("openvino", "nncf"), "onnxruntime": ("onnx", "onnxruntime")}


def require_backend(backend: str) -> None:
    """Check that `backend`'s packages import.

    Raises:
        ValueError: not one of `BACKENDS`.
        MissingExtraError: a package is missing; the message names the extra to install.
    """
    from .openvino import import_openvino

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    for name in _MODULES[backend]:
        try:
            # OpenVINO and NNCF without their telemetry (see atrous.deploy.openvino).
            import_openvino(name)
        except ImportError as error:
            raise MissingExtraError(
                f"INT8 quantization for {backend} needs the {name!r} package, which is not "
                f"installed: pip install '{_EXTRA[backend]}'.",
                name=name,
            ) from error


class CalibrationImages:
    """`count` images of a dataset as the exported graph receives them at test time.

    Iterating yields float32 arrays (1, 3, H, W), 0-255, in INPUT.FORMAT order, resized by the
    test pipeline; images are read when iterated (quantizers make several passes), so memory
    holds one at a time. The images are spread evenly over the dataset's records (a dataset is
    often sorted by city or scene).

    Args:
        cfg: the model's config (INPUT.*, MODEL.SEM_SEG_HEAD.NUM_CLASSES / IGNORE_VALUE).
        dataset_name: a registered dataset or ``file.yaml:split``, usually of the training split.
        count: how many images; all of them when the dataset has fewer (logged).
        min_size: smallest (H, W) the exported graph accepts (`min_input_size`).

    Raises:
        ValueError: `count` < 1.
        DatasetError: the dataset has no images (or cannot be listed).
    """

    def __init__(
        self,
        cfg: Any,
        dataset_name: str,
        count: int,
        *,
        min_size: tuple[int, int] = (1, 1),
    ) -> None:
        from atrous.data import get_dataset_records
        from atrous.data.errors import DatasetError
        from atrous.data.mapper import build_mapper

        if int(count) < 1:
            raise ValueError(f"the number of calibration images must be at least 1, got {count}")
        records = get_dataset_records(dataset_name)
        if not records:
            raise DatasetError(
                f"calibration dataset {dataset_name!r} has no images: pick a dataset with images "
                "(--calib-dataset), usually the training split."
            )
        if count > len(records):
            logger.warning(
                "calibration: %s has %d images, fewer than the %d asked for; using all of them",
                dataset_name,
                len(records),
                count,
            )
        count = min(int(count), len(records))
        indices = sorted({i * len(records) // count for i in range(count)})
        self.dataset_name = dataset_name
        self.files = [str(records[i]["file_name"]) for i in indices]
        self.min_size = tuple(min_size)
        self._mapper = build_mapper(cfg, is_train=False)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, file_name: str) -> np.ndarray:
        """One image, mapped: float32 (1, 3, H, W).

        Raises:
            DatasetError: the file cannot be read, or it is smaller than the graph accepts.
        """
        from atrous.data.errors import DatasetError

        try:
            mapped = self._mapper({"file_name": file_name})
        except (DatasetError, OSError) as error:
            text = str(error)
            if file_name not in text:
                text = f"{file_name}: {text}"
            raise DatasetError(f"cannot read calibration image {text}") from error
        image = mapped["image"]
        if image.shape[-2] < self.min_size[0] or image.shape[-1] < self.min_size[1]:
            raise DatasetError(
                f"calibration image {file_name} is {image.shape[-2]}x{image.shape[-1]} after the "
                f"test resize, smaller than the {self.min_size[0]}x{self.min_size[1]} the "
                "exported graph accepts (its image pooling window): use larger images or "
                "INPUT.MIN_SIZE_TEST."
            )
        return image.float().numpy()[None]

    def __iter__(self) -> Iterator[np.ndarray]:
        for file_name in self.files:
            yield self.load(file_name)


def float_module_names(model: nn.Module, keep_float: Sequence[str]) -> list[str]:
    """Names (``model.named_modules()``) of the modules that `keep_float` keeps in float32.

    ``"predictor"``: the head's final convolution to the class logits. ``"image_pooling"``: each
    ASPP's image-pooling branch (the pooling and its 1x1 convolution).

    Raises:
        ValueError: an unknown entry, or one the model does not have.
    """
    from atrous.layers import ImagePooling

    unknown = [k for k in keep_float if k not in KEEP_FLOAT_CHOICES]
    if unknown:
        raise ValueError(
            f"layers kept in float must be among {', '.join(KEEP_FLOAT_CHOICES)}; got {unknown}"
        )
    names: list[str] = []
    modules = dict(model.named_modules())
    for kind in dict.fromkeys(keep_float):
        if kind == "predictor":
            found = [n for n, m in modules.items() if n.endswith("predictor") and m is not model]
        else:
            found = [
                n.rpartition(".")[0]
                for n, m in modules.items()
                if isinstance(m, ImagePooling) and "." in n
            ]
        if not found:
            raise ValueError(f"this model has no {kind!r} to keep in float")
        names.extend(found)
    return names


def _node_module_paths(node: Any) -> set[str]:
    """Module paths a node of `export_onnx`'s graph was traced from (its ``namespace`` entry)."""
    namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
    # "…/model.sem_seg_head: HeadClass/model.sem_seg_head.predictor: Conv2d/conv2d_64: aten…"
    paths = set()
    for segment in namespace.split("/"):
        name = segment.split(":", 1)[0].strip()
        if name.startswith("model."):
            paths.add(name[len("model.") :])
    return paths


def onnx_nodes_of_modules(onnx_model: Any, module_names: Sequence[str]) -> list[str]:
    """Names of the ONNX nodes traced from `module_names` or their submodules.

    Raises:
        ValueError: a module has no node (the exporter recorded no scopes, or the name is wrong):
            keeping it in float would silently keep nothing.
    """
    found: dict[str, list[str]] = {name: [] for name in module_names}
    for node in onnx_model.graph.node:
        paths = _node_module_paths(node)
        for name in module_names:
            if name in paths:
                found[name].append(node.name)
    missing = [name for name, nodes in found.items() if not nodes]
    if missing:
        raise ValueError(
            f"no node of the exported graph comes from {missing}: cannot keep them in float"
        )
    return list(dict.fromkeys(n for nodes in found.values() for n in nodes))


@dataclass
class QuantizationResult:
    """What `quantize_model` wrote and how (what ``quantization.json`` records)."""

    path: Path
    backend: str
    calibration_images: int
    keep_float: list[str]
    float_modules: list[str]
    float_nodes: list[str]
    settings: dict[str, Any] = field(default_factory=dict)


def _checked_calibration(calibration: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    size = len(calibration) if hasattr(calibration, "__len__") else None
    if size == 0:
        raise ValueError("the calibration set is empty: give at least one image")
    return calibration


class _OrtReader:
    """onnxruntime's CalibrationDataReader protocol over a re-iterable of images."""

    def __init__(self, images: Iterable[np.ndarray], input_name: str) -> None:
        self._images, self._name = images, input_name
        self._iter: Iterator[np.ndarray] | None = None
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = iter(self._images)
        image = next(self._iter, None)
        if image is None:
            return None
        self.count += 1
        return {self._name: np.ascontiguousarray(image, dtype=np.float32)}

    def rewind(self) -> None:
        self._iter = None


def _quantize_openvino(
    onnx_path: Path,
    calibration: Iterable[np.ndarray],
    float_nodes: Sequence[str],
    output: Path,
    *,
    preset: str,
    metadata: Mapping[str, str],
) -> dict[str, Any]:
    from .openvino import import_openvino, save_openvino_model, telemetry_off

    nncf, ov = import_openvino("nncf"), import_openvino("openvino")
    with telemetry_off():
        ov_model = ov.convert_model(str(onnx_path))
    # OpenVINO keeps the ONNX node names; a node with a bias becomes the named op plus helpers
    # named "<name>/...", which belong to it as well.
    wanted = set(float_nodes)
    names = [
        op.get_friendly_name()
        for op in ov_model.get_ops()
        if op.get_friendly_name() in wanted or op.get_friendly_name().split("/")[0] in wanted
    ]
    images = list(calibration) if not hasattr(calibration, "__len__") else calibration
    count = len(images)
    if count == 0:
        raise ValueError("the calibration set is empty: give at least one image")
    with telemetry_off():
        quantized = nncf.quantize(
            ov_model,
            nncf.Dataset(images),
            preset=nncf.QuantizationPreset(preset),
            subset_size=count,
            fast_bias_correction=True,
            ignored_scope=nncf.IgnoredScope(names=names, validate=False) if names else None,
        )
    save_openvino_model(quantized, output, metadata=metadata)
    return {"preset": preset, "subset_size": count, "fast_bias_correction": True}


def _quantize_onnxruntime(
    onnx_path: Path,
    calibration: Iterable[np.ndarray],
    float_nodes: Sequence[str],
    output: Path,
    staging: Path,
    *,
    metadata: Mapping[str, str],
) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from atrous.utils.file_io import atomic_write_bytes

    prepared = staging / "prepared.onnx"
    # ONNX shape inference only: the exporter already folded BatchNorm and simplified the graph, and
    # ONNX Runtime's optimiser would rename the nodes that are kept in float.
    quant_pre_process(
        str(onnx_path), str(prepared), skip_optimization=True, skip_symbolic_shape=True
    )
    reader = _OrtReader(calibration, "images")
    quantized = staging / "quantized.onnx"
    quantize_static(
        str(prepared),
        str(quantized),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(float_nodes),
        # The calibration graph outputs each tensor's min and max (scalars), so holding them for
        # every image costs little. (CalibMaxIntermediateOutputs would bound it, but
        # onnxruntime 1.32 drops the collected ranges instead of merging them.)
        calibrate_method=CalibrationMethod.MinMax,
    )
    if reader.count == 0:
        raise ValueError("the calibration set is empty: give at least one image")
    model = onnx.load(str(quantized))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(metadata)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    atomic_write_bytes(output, model.SerializeToString())
    return {
        "quant_format": "QDQ",
        "activations": "uint8 asymmetric, per tensor",
        "weights": "int8 symmetric, per channel",
        "calibrate_method": "MinMax",
        "calibration_images": reader.count,
    }


def quantize_model(
    model: nn.Module,
    calibration: Iterable[np.ndarray],
    *,
    backend: str,
    output: str | os.PathLike,
    keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
    preset: str = "performance",
    sample_size: tuple[int, int] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> QuantizationResult:
    """Export `model` and write its static INT8 quantization for `backend`.

    Args:
        model: a float32 segmentor with its weights (put in eval mode).
        calibration: re-iterable of float32 (1, 3, H, W) images as the graph gets them at test
            time (`CalibrationImages`); it is iterated more than once.
        backend: ``"openvino"`` (writes `output` .xml + .bin) or ``"onnxruntime"`` (.onnx).
        output: the model file to write; written atomically.
        keep_float: which layers stay float32 (see `float_module_names` and the module doc).
        preset: NNCF's ``"performance"`` or ``"mixed"`` (openvino only; see the module doc).
        sample_size: (H, W) of the export's tracing input.
        metadata: string entries stored in the file next to the version stamp.

    Returns:
        A `QuantizationResult`.

    Raises:
        MissingExtraError: the backend's packages are missing (the message names the extra).
        ValueError: an empty calibration set, a bad backend / preset / keep_float entry.
        DatasetError: a calibration image cannot be read (named).
    """
    require_backend(backend)
    import onnx

    output = Path(output)
    suffix = ".xml" if backend == "openvino" else ".onnx"
    if output.suffix.lower() != suffix:
        raise ValueError(f"the {backend} INT8 model goes to a {suffix} file, got {output}")
    if preset not in ("mixed", "performance"):
        raise ValueError(f"preset must be 'mixed' or 'performance', got {preset!r}")
    calibration = _checked_calibration(calibration)
    model = model.eval()
    modules = float_module_names(model, keep_float)
    stamp = export_metadata({**dict(metadata or {}), "quantization": f"int8 {backend}"})
    with staging_dir(output.parent, prefix=".atrous-quantize.") as staging:
        onnx_path = export_onnx(model, staging / "model.onnx", sample_size=sample_size)
        float_nodes = onnx_nodes_of_modules(onnx.load(str(onnx_path)), modules) if modules else []
        logger.info(
            "INT8 %s: keeping %s in float32 (%d graph nodes)",
            backend,
            ", ".join(modules) or "nothing",
            len(float_nodes),
        )
        if backend == "openvino":
            settings = _quantize_openvino(
                onnx_path, calibration, float_nodes, output, preset=preset, metadata=stamp
            )
        else:
            settings = _quantize_onnxruntime(
                onnx_path, calibration, float_nodes, output, staging, metadata=stamp
            )
    count = settings.get("subset_size", settings.get("calibration_images", 0))
    return QuantizationResult(
        path=output,
        backend=backend,
        calibration_images=int(count),
        keep_float=list(keep_float),
        float_modules=modules,
        float_nodes=list(float_nodes),
        settings={**settings, "min_input_size": list(min_input_size(model))},
    )


def _versions(backend: str) -> dict[str, str]:
    import importlib

    versions = dict(export_metadata())
    for name in _MODULES[backend]:
        module = importlib.import_module(name)
        versions[f"{name}_version"] = str(getattr(module, "__version__", "unknown"))
    return versions


def check_output_folder(output: str | os.PathLike) -> None:
    """Refuse an output that `write_quantized_folder` must not replace.

    Raises:
        FileExistsError: `output` is a file, or a non-empty folder without ``quantization.json``.
    """
    output = Path(output)
    if not output.exists():
        return
    if not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a folder; choose another --output.")
    if any(output.iterdir()) and not (output / INFO_FILE).is_file():
        raise FileExistsError(
            f"{output} is a non-empty folder without {INFO_FILE}; refusing to replace it. "
            "Choose a new or empty --output folder."
        )


def write_quantized_folder(
    output: str | os.PathLike,
    *,
    cfg: Any,
    model: nn.Module,
    calibration: CalibrationImages,
    backend: str,
    keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
    preset: str = "performance",
    sample_size: tuple[int, int] | None = None,
) -> Path:
    """Quantize `model` into a folder that says what it is, written whole or not at all.

    The folder holds the INT8 model (``model_int8.xml`` + ``.bin`` for openvino,
    ``model_int8.onnx`` for onnxruntime; plain files any OpenVINO / ONNX Runtime program runs),
    ``config.yaml`` (the model's config: classes, input format and test sizes) and
    ``quantization.json`` (backend, calibration dataset and files, the layers kept in float32,
    the settings and the versions of every tool involved).

    Args:
        output: the folder; an existing one is replaced only if it is empty or holds a
            ``quantization.json``.
        cfg: the model's resolved config.
        model: the float32 segmentor with its weights.
        calibration: the calibration images (`CalibrationImages`).
        backend, keep_float, preset, sample_size: see `quantize_model`.

    Returns:
        The folder.

    Raises:
        FileExistsError: `output` is a file or a foreign non-empty folder.
        and what `quantize_model` raises.
    """
    from atrous.utils.file_io import atomic_write_json, atomic_write_text

    output = Path(output)
    check_output_folder(output)
    require_backend(backend)
    with staging_dir(output.parent, prefix=f".{output.name}.") as staging:
        model_file = MODEL_FILES[backend]
        result = quantize_model(
            model,
            calibration,
            backend=backend,
            output=staging / model_file,
            keep_float=keep_float,
            preset=preset,
            sample_size=sample_size,
        )
        folder_cfg = cfg.clone()
        folder_cfg.defrost()
        folder_cfg.MODEL.DEVICE = "cpu"
        atomic_write_text(staging / CONFIG_FILE, folder_cfg.dump())
        info = {
            "format": "atrous-int8",
            "model_file": model_file,
            "weights_file": model_file[:-4] + ".bin" if backend == "openvino" else None,
            "backend": backend,
            "precision": "int8 (static post-training quantization)",
            "input": {
                "name": "images",
                "shape": "float32 (N, 3, H, W)",
                "format": cfg.INPUT.FORMAT,
                "range": "0-255",
                "min_size": result.settings["min_input_size"],
            },
            "output": {"name": "logits", "shape": "float32 (N, num_classes, H, W)"},
            "source_weights": str(cfg.MODEL.WEIGHTS),
            "calibration": {
                "dataset": calibration.dataset_name,
                "images": result.calibration_images,
                "preprocessing": "test-time: ResizeShortestEdge("
                f"{int(cfg.INPUT.MIN_SIZE_TEST)}, {int(cfg.INPUT.MAX_SIZE_TEST)})",
                "files": list(calibration.files),
            },
            "kept_in_float32": {
                "layers": result.keep_float,
                "modules": result.float_modules,
                "graph_nodes": result.float_nodes,
            },
            "settings": {k: v for k, v in result.settings.items() if k != "min_input_size"},
            "versions": _versions(backend),
        }
        atomic_write_json(staging / INFO_FILE, info)
        check_output_folder(output)  # again: it may have changed while quantizing
        publish_folder(staging, output)
    logger.info("Wrote INT8 %s model folder %s", backend, output)
    return output
