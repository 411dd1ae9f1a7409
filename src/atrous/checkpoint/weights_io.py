"""Weights-only files: reading ``.safetensors`` safely, writing weights as safetensors or torch.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor name ->
dtype, shape, byte range; plus an optional ``__metadata__`` of strings) and the raw tensor bytes.
Nothing in it is executable, and the `safetensors` library validates the header before handing
out a tensor: header length within the file, valid UTF-8 JSON object, known dtypes, byte ranges
that are in order, contiguous, non-overlapping, cover the data exactly and match
``dtype size x shape`` (without overflow). Its errors are turned into
:class:`~.errors.CorruptCheckpointError` naming the file; this module adds no second parser.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..utils.file_io import atomic_write
from ..utils.version import version_metadata
from .errors import CheckpointNotFoundError, CorruptCheckpointError

__all__ = [
    "SAFETENSORS_SUFFIX",
    "is_safetensors_file",
    "read_safetensors",
    "read_safetensors_checkpoint",
    "save_weights",
]

SAFETENSORS_SUFFIX = ".safetensors"
_TORCH_SUFFIXES = (".pth", ".pt")
# How a state dict's names must be read, kept through a format conversion of a detectron2 file:
# backbone-only model-zoo files need suffix matching, Caffe2 names need renaming. A torch file
# holds them as top-level keys (detectron2's own convention), a safetensors file as metadata.
_MATCHING = "matching_heuristics"
_AUTHOR = "__author__"


def is_safetensors_file(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is (meant to be) a safetensors file.

    True for a ``.safetensors`` name, whatever the content (so a damaged one gets the
    safetensors error, not a pickle error), and for any file that starts like one: a header
    length that fits in the file followed by ``{``.
    """
    path = os.fspath(path)
    if path.endswith(SAFETENSORS_SUFFIX):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = os.path.getsize(path)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 2 <= header_len <= size - 8


def read_safetensors(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor of a safetensors file onto the CPU.

    Args:
        path: the file.

    Returns:
        ``(tensors, metadata)``: name -> tensor, and the header's ``__metadata__`` (``{}`` when
        the file has none).

    Raises:
        CheckpointNotFoundError: `path` does not exist.
        CorruptCheckpointError: the header lies about the data (truncated file, byte ranges
            past the end or overlapping, a shape that does not fit its bytes, invalid JSON, ...)
            or a tensor's dtype is not supported by this torch.
    """
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"Safetensors file {path} does not exist.")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        raise CorruptCheckpointError(
            f"{path} is not a valid safetensors file: {_first_line(exc)}. It is truncated, "
            "damaged or was written by a faulty tool; nothing was loaded. Delete it and convert "
            "or download it again."
        ) from None
    except (TypeError, ValueError, RuntimeError) as exc:
        # e.g. a dtype the safetensors format knows but this torch build cannot represent
        raise CorruptCheckpointError(
            f"{path}: cannot read its tensors with torch {torch.__version__}: {_first_line(exc)}."
        ) from None
    except OSError as exc:
        raise CorruptCheckpointError(f"{path} cannot be read: {exc}") from exc
    return tensors, metadata


def read_safetensors_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A safetensors file in `load_checkpoint_file`'s form: ``{"model", "metadata", ...}``.

    The header's ``matching_heuristics`` / ``__author__`` entries (written by `save_weights`
    for files converted from detectron2 pickles) become the checkpoint keys of the same name.
    """
    tensors, metadata = read_safetensors(path)
    checkpoint: dict[str, Any] = {"model": tensors, "metadata": metadata}
    if metadata.get(_MATCHING) == "True":
        checkpoint[_MATCHING] = True
    if metadata.get(_AUTHOR):
        checkpoint[_AUTHOR] = metadata[_AUTHOR]
    return checkpoint


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _detached_copies(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no memory with each other.

    safetensors refuses tensors that share storage (tied weights, views of one buffer) and
    non-contiguous ones; each name gets its own compact copy so every key survives the round
    trip under its own name.
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"cannot save {name!r}: a {type(value).__name__}, not a tensor (weights files "
                "hold tensors only)"
            )
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        shared = storage.data_ptr() in seen or storage.nbytes() != tensor.nbytes
        if tensor.numel() and storage.data_ptr():
            seen.add(storage.data_ptr())
        out[str(name)] = tensor.clone() if shared else tensor
    return out


def save_weights(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a state dict as ``.safetensors`` or ``.pth`` (chosen by `path`'s suffix), atomically.

    Every file carries the version stamp (`atrous.utils.version.version_metadata`) plus
    `metadata`: in the safetensors header's ``__metadata__``, or as ``"metadata"`` next to
    ``"model"`` in a torch file (``{"model": state_dict, "metadata": {...}}``, readable by
    ``torch.load(weights_only=True)``, detectron2 and `Checkpointer`). A ``"matching_heuristics":
    "True"`` or ``"__author__"`` metadata entry is also written as the torch file's top-level key
    of that name, which is where detectron2 and `Checkpointer` look for it.

    Args:
        path: destination ending in ``.safetensors``, ``.pth`` or ``.pt``.
        state_dict: name -> tensor (any device; saved on the CPU, contiguous, unshared).
        metadata: extra string entries for the header.

    Returns:
        `path` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: another suffix.
        TypeError: a value is not a tensor, or a metadata value is not a string.
    """
    from safetensors.torch import save

    path = Path(path)
    stamp = {"format": "pt", **version_metadata(), **dict(metadata or {})}
    bad = [k for k, v in stamp.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"weights metadata must map strings to strings; not so for {bad}")
    tensors = _detached_copies(state_dict)
    if path.suffix == SAFETENSORS_SUFFIX:
        data = save(tensors, metadata=stamp)
        return atomic_write(path, lambda f: f.write(data))
    if path.suffix in _TORCH_SUFFIXES:
        data: dict[str, Any] = {"model": tensors, "metadata": stamp}
        if stamp.get(_MATCHING) == "True":
            data[_MATCHING] = True
        if stamp.get(_AUTHOR):
            data[_AUTHOR] = stamp[_AUTHOR]
        return atomic_write(path, lambda f: torch.save(data, f))
    raise ValueError(
        f"cannot tell the format of {path} from its suffix: use {SAFETENSORS_SUFFIX} or .pth"
    )
