"""Reading checkpoint files: every format `Checkpointer.load` accepts, executing nothing.

* detectron2 model-zoo ``.pkl`` files and other (Caffe2 / Detectron1 / raw) pickles, through
  :mod:`.safe_pickle`, normalised the way detectron2 does (``"blobs"`` unwrapped, ``*_momentum``
  dropped, ``"matching_heuristics"`` on for files from outside the zoo);
* ``.safetensors`` files (detected by their header, read by :mod:`.weights_io`);
* torch files, zip and legacy, whose pickles are checked by :mod:`.safe_pickle` before
  ``torch.load(weights_only=True)`` reads them.

Every problem is a `CheckpointError` naming the file and what to do.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import reprlib
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from . import model_zoo
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsafePickleError,
    redo_advice,
)
from .safe_pickle import (
    NUMPY_SAFE_GLOBALS,
    check_torch_pickle,
    load_pickle,
    resolve_pending,
    unsafe_pickle_error,
)
from .weights_io import is_safetensors_file, read_safetensors_checkpoint

__all__ = ["describe_value", "load_checkpoint_file", "weight_tensor"]

logger = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"


def describe_value(value: Any) -> str:
    """`value` for an error message: its type and a shortened repr."""
    if value is None:
        return "None"
    cls = type(value)
    name = cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return f"a {name} ({reprlib.repr(value)})"


def weight_tensor(value: Any, key: str, path: str) -> torch.Tensor:
    """A weight of the checkpoint's "model" dict as a dense CPU tensor.

    Raises:
        CorruptCheckpointError: naming `key`, when the value is not a numeric array or a plain
            dense tensor (lists, None, nested dicts, strings, sparse/quantized/meta tensors).
    """
    if isinstance(value, torch.Tensor):
        plain = type(value) in (torch.Tensor, nn.Parameter) and value.layout == torch.strided
        if not plain or value.is_quantized or value.is_nested or value.device.type != "cpu":
            raise CorruptCheckpointError(
                f"{path}: the weight {key!r} is a {type(value).__name__} with layout "
                f"{value.layout}, device {value.device}"
                + (" (quantized)" if value.is_quantized else "")
                + "; only dense CPU tensors can be loaded into a model. The file was saved "
                "from a sparse, quantized or meta-device model, or it is damaged."
            )
        return value
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        if array.dtype.kind not in "biufc" or array.dtype.char in "gG":  # not longdouble
            # The safe loaders admit nothing else; this guards values handed in by other code.
            raise CorruptCheckpointError(
                f"{path}: the weight {key!r} is a numpy array of dtype {array.dtype}, not a "
                "numeric one, so it cannot be a model weight."
            )
        # Unpickled arrays may be read-only, non-contiguous or big-endian; torch takes none.
        native = array.astype(array.dtype.newbyteorder("="), copy=False)
        return torch.from_numpy(np.require(native, requirements=["C", "W"]))
    raise CorruptCheckpointError(
        f"{path}: the weight {key!r} is {describe_value(value)}, not an array or tensor. The "
        "'model' entry of a checkpoint must map parameter names to arrays; this file is damaged "
        "or not a model checkpoint."
    )


def load_checkpoint_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file into detectron2's normalised form, executing nothing.

    Args:
        path: a ``.pkl`` (detectron2 / Caffe2 pickle), ``.safetensors`` or torch file.

    Returns:
        A dict with at least ``"model"`` (name -> array or tensor); ``.pkl`` files from outside
        the detectron2 zoo get ``"__author__": "Caffe2"`` and ``"matching_heuristics": True``;
        safetensors files give ``{"model": tensors, "metadata": header __metadata__}``.

    Raises:
        CheckpointNotFoundError: `path` does not exist.
        CorruptCheckpointError: the file is truncated, damaged (malformed arrays included), all
            zero bytes, or not a checkpoint.
        UnsafePickleError: the file holds Python objects beyond arrays and plain containers, or
            numpy values of a non-numeric dtype (object, string, structured, datetime).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointNotFoundError(
            f"{path} is a directory, not a checkpoint file. Pass the .pkl/.pth file inside it "
            "(a training output directory names its latest one in last_checkpoint)."
        )
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(
            f"Checkpoint file {path} does not exist. Pass the path of a .pkl/.pth file, an "
            "https:// or detectron2:// URL, or a model-zoo name "
            f"({', '.join(model_zoo.list_models())})."
        )
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise CorruptCheckpointError(f"{path} is empty. {redo_advice(path)}")
    if is_safetensors_file(path):
        return read_safetensors_checkpoint(path)
    if magic == b"\0\0\0\0" and _only_zero_bytes(path):
        raise CorruptCheckpointError(
            f"{path} holds nothing but zero bytes ({os.path.getsize(path)} of them), so it is not "
            "a checkpoint: its contents were never written, as happens when a copy or download "
            f"is interrupted or the disk fills up. {redo_advice(path)}"
        )
    if magic == _ZIP_MAGIC:
        return _normalise_torch(_torch_load(path), path)
    if path.endswith(".pkl"):
        return _normalise_pickle(load_pickle(path), path)
    try:  # torch's legacy (pre-zip) format
        return _normalise_torch(_torch_load(path), path)
    except CheckpointError as torch_error:
        # A plain pickle of arrays saved under a .pth name: readable by the safe unpickler.
        try:
            data = load_pickle(path)
        except UnsafePickleError as pickle_error:
            # The pickle reader names what the file asked for; torch's legacy reader only got as
            # far as its magic number.
            best = torch_error if isinstance(torch_error, UnsafePickleError) else pickle_error
            raise best from None
        except CheckpointError:
            raise torch_error from None
        return _normalise_torch(data, path)


def _only_zero_bytes(path: str) -> bool:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if chunk.count(0) != len(chunk):
                return False
    return True


def _torch_error_detail(message: str) -> str:
    """The part of a ``torch.load`` error that describes the file, without torch's advice.

    torch wraps unpickling errors in instructions to retry with ``weights_only`` switched off;
    for a file that failed these checks that advice is wrong, so it never reaches our messages.
    """
    if "WeightsUnpickler error:" in message:
        message = message.rpartition("WeightsUnpickler error:")[2]
    elif message.startswith("Weights only load failed"):
        message = message.partition("\n\n")[2]
    if "legacy .tar format" in message:
        return "it looks like an archive in torch's pre-1.6 .tar format, which atrous does not read"
    line = next((ln.strip() for ln in message.splitlines() if ln.strip()), "")
    # Keep the first sentence (torch appends explanations and links).
    sentence = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0][:200]
    return "" if "weights_only" in sentence.lower() else sentence


def _check_zip_pickles(path: str) -> None:
    """Run :func:`check_torch_pickle` on the pickles of a torch zip file before torch reads it."""
    # An archive or member that cannot be read (bad zip, CRC or compression error) is left for
    # torch.load to report in its own terms.
    try:
        archive = zipfile.ZipFile(path)
    except Exception:
        return
    with archive:
        for info in archive.infolist():
            if info.filename.endswith(".pkl"):
                # Streamed: a compressed member is never held in memory as a whole.
                try:
                    member = archive.open(info)
                except Exception:
                    return
                with member:
                    check_torch_pickle(member, source=path)


def _torch_load(path: str) -> Any:
    with open(path, "rb") as f:
        is_zip = f.read(4) == _ZIP_MAGIC
        if not is_zip:
            # torch's legacy format is consecutive pickles (magic number, protocol, system info,
            # the object, storage keys) followed by raw storage bytes; scanning stops at the
            # first stream that is not a pickle.
            f.seek(0)
            for _ in range(5):
                check_torch_pickle(f, source=path)
    if is_zip:
        _check_zip_pickles(path)
    try:
        # Arrays inside torch files are admitted on the same terms as in .pkl files. A plain
        # pickle tried as torch's legacy format makes torch warn about its protocol; the caller
        # falls back to the pickle loader then, so the warning would only confuse.
        with (
            torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS),
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except UnsafePickleError as exc:  # raised by safe_pickle's constructors
        raise unsafe_pickle_error(path, str(exc)) from None
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        detail = _torch_error_detail(str(exc))
        unsafe = re.search(r"GLOBAL (\S+)", str(exc))
        if unsafe:
            raise UnsafePickleError(
                f"Refusing to load {path}: it holds Python objects other than tensors, numpy "
                f"arrays and plain containers (it references {unsafe.group(1)}). Loading it "
                "could run arbitrary code, so nothing in it was executed. If you trust the file, "
                "re-save its state dict alone with torch.save(model.state_dict(), ...)."
            ) from None
        raise CorruptCheckpointError(
            f"{path} is truncated, corrupt or not a torch checkpoint (its pickle data is "
            f"malformed{': ' + detail if detail else ''}). {redo_advice(path)}"
        ) from None
    except Warning:  # a warning turned into an error (-W error) is about the code, not the file
        raise
    except Exception as exc:
        # Everything torch.load raises past this point comes from the file's bytes: a damaged
        # zip (RuntimeError), a missing record (KeyError), storage sizes that do not add up,
        # wrong argument types for torch's rebuild functions (TypeError), absurd lengths
        # (MemoryError), ...
        detail = _torch_error_detail(str(exc))
        raise CorruptCheckpointError(
            f"{path} is truncated, corrupt or not a torch checkpoint "
            f"({type(exc).__name__}{': ' + detail if detail else ''}). {redo_advice(path)}"
        ) from exc
    return resolve_pending(data, source=path)


def _normalise_pickle(data: Any, path: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise CorruptCheckpointError(
            f"{path} holds {describe_value(data)}, not a dict of weights; it is not a checkpoint."
        )
    if "model" in data and "__author__" in data:
        logger.info("Reading %s (written by %s)", path, reprlib.repr(data["__author__"]))
        return dict(data)
    # Caffe2 / Detectron1 files: detection models wrap the weights in "blobs"; the solver's
    # momentum buffers are of no use for initialisation.
    weights = data.get("blobs", data)
    if not isinstance(weights, Mapping):
        raise CorruptCheckpointError(
            f"{path}: the 'blobs' entry is {describe_value(weights)}, not a dict of weights."
        )
    weights = {k: v for k, v in weights.items() if not str(k).endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


def _normalise_torch(data: Any, path: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise CorruptCheckpointError(
            f"{path} holds {describe_value(data)}, not a state dict; save "
            "model.state_dict() rather than the model object."
        )
    data = dict(data)
    return data if "model" in data else {"model": data}
