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

Telemetry: OpenVINO and NNCF report usage to Google Analytics through the ``openvino_telemetry``
package unless their user opted out (``opt_in_out --opt_out``): an event on ``import openvino``,
a session per conversion and per ``nncf.quantize``. Each report is sent by a thread pool that
forks the whole calling process (multiprocessing's fork start method) from a non-main thread,
while the caller goes on working: about 45 forks for one export and quantization. A fork runs the
process's ``pthread_atfork`` handlers in that thread; NumPy's OpenBLAS shuts its thread pool down
there, under a matrix product the main thread may be running (which then never returns). A
command-line tool must not report behind its user's back either, so everything here imports and
calls OpenVINO and NNCF inside `telemetry_off`, which leaves the user's consent file untouched.

Signal stacks: every model atrous reads or compiles goes through one ``openvino.Core`` for the
whole process, `openvino_core`. OpenVINO's CPU plugin, loaded once per Core, swaps the calling
thread's alternate signal stack for a larger one of its own (room for AMX state in a signal frame)
and, when its Core is destroyed, puts back the stack it found and unmaps its own. Two Cores that
end in the order they began leave the thread's alternate stack pointing at unmapped memory: the
next signal with a handler there (Python runs all its handlers on the alternate stack, faulthandler
installs one, and torch's DataLoader handles SIGCHLD, so a child process exiting is enough) cannot
be delivered, and the kernel kills the process with SIGSEGV (``si_code`` SI_KERNEL). One Core that
lives as long as the process cannot end out of order.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from ..utils.extras import MissingExtraError
from ..utils.file_io import staging_dir
from .export import export_metadata, export_onnx

__all__ = [
    "OPENVINO_EXTRA",
    "RT_INFO_SECTION",
    "export_openvino",
    "import_openvino",
    "openvino_core",
    "read_openvino_metadata",
    "require_openvino",
    "save_openvino_model",
    "telemetry_off",
]

OPENVINO_EXTRA = "atrous[openvino]"
# The rt_info section holding the project's string entries (next to OpenVINO's own).
RT_INFO_SECTION = "atrous"
# The package OpenVINO's converter and NNCF send their usage reports with.
TELEMETRY_PACKAGE = "openvino_telemetry"


class _NoTelemetry:
    """Stands in for ``openvino_telemetry.Telemetry`` (and NNCF's wrapper of it): sends nothing.

    It has the methods OpenVINO and NNCF call and no ``backend`` attribute, so OpenVINO does not
    try to re-initialise it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        return None

    init = start_session = end_session = send_event = send_error = _nothing
    send_stack_trace = send_opt_in_event = force_shutdown = _nothing


@contextmanager
def telemetry_off() -> Iterator[None]:
    """Within the block, OpenVINO and NNCF report nothing, whatever the user's telemetry consent.

    Both libraries fall back to a no-op telemetry object when ``openvino_telemetry`` cannot be
    imported. So if it is not imported yet, it is made unimportable for the block: OpenVINO and
    NNCF imported here keep their no-op for the life of the process (and report nothing when the
    user calls them later either). If it is imported already (the program imported OpenVINO or
    NNCF itself first), its ``Telemetry`` class and NNCF's telemetry object are replaced by a
    no-op for the block and restored after it. Nothing on disk changes: the user's consent file
    (``~/intel/openvino_telemetry``) keeps deciding for the user's own calls.

    Not thread-safe against another thread importing or using OpenVINO at the same time: that
    thread may report nothing either while the block runs.
    """
    restore: list[tuple[Any, str, Any]] = []
    hidden = TELEMETRY_PACKAGE not in sys.modules
    if hidden:
        sys.modules[TELEMETRY_PACKAGE] = None  # type: ignore[assignment]  # import -> ImportError
    elif sys.modules[TELEMETRY_PACKAGE] is not None:
        package = sys.modules[TELEMETRY_PACKAGE]
        restore.append((package, "Telemetry", package.Telemetry))
        package.Telemetry = _NoTelemetry
    # nncf.quantize and its other tracked functions send through this module's `telemetry`.
    decorator = sys.modules.get("nncf.telemetry.decorator")
    if decorator is not None and hasattr(decorator, "telemetry"):
        restore.append((decorator, "telemetry", decorator.telemetry))
        decorator.telemetry = _NoTelemetry()
    try:
        yield
    finally:
        for owner, name, value in reversed(restore):
            setattr(owner, name, value)
        if hidden and sys.modules.get(TELEMETRY_PACKAGE, False) is None:
            del sys.modules[TELEMETRY_PACKAGE]


def import_openvino(name: str = "openvino") -> ModuleType:
    """Import and return `name` (``openvino``, ``nncf``, a submodule) inside `telemetry_off`."""
    with telemetry_off():
        return importlib.import_module(name)


_core_lock = threading.Lock()
_core: Any = None


def openvino_core() -> Any:
    """The process's one ``openvino.Core``: every IR atrous reads or compiles goes through it.

    Created on first use, never destroyed before the process ends, so that the CPU plugin's
    alternate signal stack is set up once and never unmapped under a thread (see the module doc).
    """
    global _core
    with _core_lock:
        if _core is None:
            _core = import_openvino().Core()
        return _core


def require_openvino(*modules: str) -> None:
    """Import `modules` (default ``openvino``) or raise one ImportError that names the extra.

    OpenVINO and NNCF are imported through `import_openvino`, so that they report nothing.

    Raises:
        MissingExtraError: a module is not installed; the message says
            ``pip install 'atrous[openvino]'``.
    """
    for name in modules or ("openvino",):
        try:
            import_openvino(name)
        except ImportError as error:
            raise MissingExtraError(
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
    ov = import_openvino()

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
        MissingExtraError: OpenVINO is not installed (the message names the extra).
    """
    require_openvino()
    ov = import_openvino()

    output = _check_xml_path(output)
    with staging_dir(output.parent, prefix=".atrous-export.") as staging:
        onnx_path = export_onnx(
            model, staging / "model.onnx", sample_size=sample_size, metadata=metadata, **onnx_kwargs
        )
        with telemetry_off():
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
    ov_model = openvino_core().read_model(str(path))
    if not ov_model.has_rt_info([RT_INFO_SECTION]):
        return {}
    section = ov_model.get_rt_info()[RT_INFO_SECTION]
    return {key: ov_model.get_rt_info([RT_INFO_SECTION, key]).astype(str) for key in section}
