"""A pickle loader that only rebuilds numpy arrays, dtypes, scalars and plain containers.

detectron2 model-zoo ``.pkl`` files are ordinary pickles (``pickle.load(f, encoding="latin1")`` in
the original), and an ordinary pickle can call any importable function while it loads. This module
reads the same files with an unpickler whose ``find_class`` admits a short, explicit list of
constructors, so a malicious file fails with :class:`UnsafePickleError` before anything runs.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import struct
from collections import OrderedDict
from typing import Any, BinaryIO

import numpy as np

from .errors import CorruptCheckpointError, UnsafePickleError

__all__ = ["NUMPY_SAFE_GLOBALS", "SafeUnpickler", "load_pickle", "loads_pickle"]

try:  # numpy >= 2 keeps the implementation in numpy._core; 1.x only has numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

_LATIN1_NAMES = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"}


def _encode_latin1(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol-2 pickles spell every `bytes` object as `_codecs.encode(text, "latin1")`. The real
    # `_codecs.encode` accepts any codec name (and imports codec modules by name), so only the two
    # text encodings pickle itself emits are honoured here.
    if not isinstance(obj, str):
        raise UnsafePickleError(f"_codecs.encode called on {type(obj).__name__}, expected str")
    if encoding.lower() not in _LATIN1_NAMES and encoding.lower().replace("_", "-") != "utf-8":
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode(encoding, errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _multiarray._reconstruct
    scalar = _multiarray.scalar
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _encode_latin1,
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "complex"): complex,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "slice"): slice,
    }
    # Files written by numpy 1.x name `numpy.core`, numpy 2.x `numpy._core`; both resolve to the
    # functions of the installed numpy without importing the deprecated `numpy.core` shim.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = _numeric._frombuffer
    # numpy >= 1.25 pickles dtype instances of protocol >= 3 through their DType classes.
    for name in dir(np.dtypes):
        if name.endswith("DType"):
            allowed[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    return allowed


_ALLOWED = _allowed_globals()

# The numpy constructors among them, for `torch.serialization.safe_globals` (torch files that
# hold numpy arrays).
NUMPY_SAFE_GLOBALS: list[Any] = list(
    {id(v): v for (module, _), v in _ALLOWED.items() if module.startswith("numpy")}.values()
)


class SafeUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only numpy array/dtype/scalar constructors and containers.

    Dicts, lists, tuples, strings, numbers, booleans and ``None`` need no global lookup and load
    as usual. Any other global (``os.system``, ``builtins.eval``, ``torch._utils...``) raises
    :class:`UnsafePickleError` at the moment the pickle names it, before it could be called.
    """

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (`__builtin__.set`, also what protocol < 3 writes today) map to their
        # Python 3 modules as in the stock unpickler with fix_imports=True; the names are Python
        # 2-only, so mapping them unconditionally cannot alter a Python 3 name.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"the pickle references {module}.{name}, which is not a numpy array, dtype or "
                "plain container"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        # torch's legacy (non-zip) format and other frameworks store tensors as persistent ids;
        # resolving them would need their (unrestricted) loaders.
        raise UnsafePickleError(
            "the pickle contains persistent references (e.g. a torch.save file in the legacy "
            "format), which a plain-array loader cannot resolve"
        )


# What a damaged pickle stream raises, depending on where the damage is.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    UnicodeDecodeError,
    struct.error,
    OverflowError,
    MemoryError,
    RecursionError,
)


def _load(stream: BinaryIO, source: str) -> Any:
    try:
        return SafeUnpickler(stream, encoding="latin1").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(
            f"Refusing to load {source}: {exc}. Unpickling it could run arbitrary code, so "
            "nothing in it was executed. Only use checkpoints from sources you trust; a trusted "
            "file can be converted to a plain state dict (name -> array) and saved again."
        ) from None
    except _DECODE_ERRORS as exc:
        raise CorruptCheckpointError(
            f"{source} is truncated or corrupt and cannot be read as a pickle "
            f"({type(exc).__name__}: {exc}). Delete it and download or copy it again."
        ) from exc


def load_pickle(path: str | os.PathLike[str]) -> Any:
    """Read a pickle file with :class:`SafeUnpickler` (``encoding="latin1"`` like detectron2).

    Args:
        path: the file to read.

    Returns:
        The unpickled object: nested dicts/lists/tuples of numpy arrays, scalars and strings.

    Raises:
        UnsafePickleError: the file asks for any other Python object (nothing was executed).
        CorruptCheckpointError: the file is truncated or not a pickle.
    """
    with open(path, "rb") as f:
        return _load(f, os.fspath(path))


def loads_pickle(data: bytes, *, source: str = "<bytes>") -> Any:
    """Like :func:`load_pickle` for bytes in memory; `source` names them in error messages."""
    return _load(io.BytesIO(data), source)
