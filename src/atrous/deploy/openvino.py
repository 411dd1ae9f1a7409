"""Export a segmentor to OpenVINO IR (``.xml`` graph + ``.bin`` weights) with dynamic N, H, W.

The model goes through `atrous.deploy.export.export_onnx` (so every ONNX option passes straight
through and the graph contract is the same) and then OpenVINO's own converter::

    images: float32 (N, 3, H, W), INPUT.FORMAT order, 0-255  ->  logits: float32 (N, C, H, W)

Weights stay float32 (``compress_to_fp16=False``): the IR computes what the ONNX file computes,
and a CPU plugin still chooses bf16 where the hardware has it when asked to
(``INFERENCE_PRECISION_HINT``). The version stamp and any metadata are stored in the model's
``rt_info`` under ``atrous``: ``model.get_rt_info(["atrous", "atrous_version"])``, or
`read_openvino_metadata`.

Needs the optional extra ``atrous[openvino]``; without it `require_openvino` raises an
ImportError whose message names the extra.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..utils.file_io import staging_dir
from .export import export_metadata, export_onnx

__all__ = [
    "OPENVINO_EXTRA",
    "RT_INFO_SECTION",
    "export_openvino",
    "read_openvino_metadata",
    "require_openvino",
    "save_openvino_model",
]

OPENVINO_EXTRA = "atrous[openvino]"
# The rt_info section holding the project's string entries (next to OpenVINO's own).
RT_INFO_SECTION = "atrous"


def require_openvino(*modules: str) -> None:
    """Import `modules` (default ``openvino``) or raise one ImportError that names the extra.

    Raises:
        ImportError: a module is not installed; the message says ``pip install 'atrous[openvino]'``.
    """
    import importlib

    for name in modules or ("openvino",):
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ImportError(
                f"OpenVINO export and INT8 quantization need the {name!r} package, which is not "
                f"installed: pip install '{OPENVINO_EXTRA}'.",
                name=name,
            ) from error


def _check_xml_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    if output.suffix.lower() != ".xml":
        raise ValueError(
            f"OpenVINO IR goes to a .xml file (its weights go next to it as .bin), got {output}"
        )
    return output


def save_openvino_model(
    ov_model: Any, output: str | os.PathLike, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Save an `openvino.Model` as ``output`` (.xml) + the .bin of the same stem, atomically.

    Both files are written into a temporary folder next to `output`, fsynced, then renamed into
    place, the .bin first: a failure leaves the previous pair (or nothing) behind, never a .xml
    without its weights. The version stamp and `metadata` go into ``rt_info`` (see module doc).

    Returns:
        The .xml path.
    """
    import openvino as ov

    output = _check_xml_path(output)
    for key, value in export_metadata(metadata).items():
        ov_model.set_rt_info(value, [RT_INFO_SECTION, key])
    with staging_dir(output.parent, prefix=".atrous-export.") as staging:
        xml = staging / output.name
        try:
            ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        except RuntimeError as error:
            # OpenVINO reports a failed write as "basic_ios::clear: iostream error".
            raise OSError(
                f"OpenVINO could not write {output} and its .bin ({error}): the disk may be full "
                "or the folder not writable."
            ) from error
        bin_file = xml.with_suffix(".bin")
        for path in (bin_file, xml):
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(bin_file, output.with_suffix(".bin"))
        os.replace(xml, output)
    return output


def export_openvino(
    model: nn.Module,
    output: str | os.PathLike,
    *,
    sample_size: tuple[int, int] | None = None,
    metadata: Mapping[str, str] | None = None,
    **onnx_kwargs: Any,
) -> Path:
    """Write `model` as OpenVINO IR with dynamic batch, height and width.

    Args:
        model: a segmentor; exported in eval mode, on its current device, in float32.
        output: path of the .xml file; the weights go to the .bin of the same stem.
        sample_size: (H, W) of the example input used for tracing (see `export_onnx`).
        metadata: string entries for ``rt_info``, next to the version stamp.
        **onnx_kwargs: passed to `export_onnx` (``opset_version``, ...).

    Returns:
        The .xml path. Graph input ``images`` (N, 3, H, W) float32, output ``logits``.

    Raises:
        ImportError: OpenVINO is not installed (the message names the extra).
    """
    require_openvino()
    import openvino as ov

    output = _check_xml_path(output)
    with staging_dir(output.parent, prefix=".atrous-export.") as staging:
        onnx_path = export_onnx(
            model, staging / "model.onnx", sample_size=sample_size, metadata=metadata, **onnx_kwargs
        )
        ov_model = ov.convert_model(str(onnx_path))
        # The converter drops ONNX metadata_props; copy them all, so that what export_onnx
        # records (the graph kind of an end-to-end graph, class names) reaches the IR too.
        import onnx

        onnx_model = onnx.load(str(onnx_path), load_external_data=False)
        props = {entry.key: entry.value for entry in onnx_model.metadata_props}
        return save_openvino_model(ov_model, output, metadata={**props, **dict(metadata or {})})


def read_openvino_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``rt_info`` entries the project wrote into an IR file (version stamp, metadata)."""
    require_openvino()
    import openvino as ov

    ov_model = ov.Core().read_model(str(path))
    if not ov_model.has_rt_info([RT_INFO_SECTION]):
        return {}
    section = ov_model.get_rt_info()[RT_INFO_SECTION]
    return {key: ov_model.get_rt_info([RT_INFO_SECTION, key]).astype(str) for key in section}
