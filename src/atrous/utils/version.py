"""The package version, and the version stamp written into every file the project saves.

The version comes from the installed distribution's metadata (what ``pip install`` recorded).
Running from a source tree that was never installed (``PYTHONPATH=src``) falls back to the
``version`` line of the tree's ``pyproject.toml``, so the stamp is never silently empty.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from pathlib import Path

__all__ = ["package_version", "version_metadata"]

_DIST_NAME = "atrous"
_UNKNOWN = "0+unknown"


@functools.cache
def package_version() -> str:
    """The atrous version, e.g. ``"0.1.0"`` (``"0+unknown"`` when nothing records one)."""
    try:
        return importlib.metadata.version(_DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        return _source_tree_version() or _UNKNOWN


def _source_tree_version() -> str | None:
    # src/atrous/utils/version.py -> the checkout's pyproject.toml
    pyproject = Path(__file__).resolve().parents[3] / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return None
    # Only the [project] table's own name/version count (tomllib is not in Python 3.10).
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    if project is None:
        return None
    body = project.group(1)
    name = re.search(r'^name\s*=\s*"([^"]+)"', body, re.MULTILINE)
    version = re.search(r'^version\s*=\s*"([^"]+)"', body, re.MULTILINE)
    if name is None or name.group(1) != _DIST_NAME or version is None:
        return None
    return version.group(1)


def version_metadata() -> dict[str, str]:
    """``{"atrous_version": ..., "torch_version": ...}``: the stamp saved files carry.

    Plain strings only, so it fits every container the project writes: a weights-only torch
    checkpoint, a safetensors header, ONNX ``metadata_props``, TorchScript extra files.
    """
    import torch

    return {"atrous_version": package_version(), "torch_version": str(torch.__version__)}
