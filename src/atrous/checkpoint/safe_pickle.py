"""A pickle loader that only rebuilds boolean/numeric numpy arrays, scalars and plain containers.

detectron2 model-zoo ``.pkl`` files are ordinary pickles (``pickle.load(f, encoding="latin1")`` in
the original), and an ordinary pickle can call any importable function while it loads. This module
reads the same files with an unpickler whose ``find_class`` admits a short, explicit list of
names, so a malicious file fails with :class:`UnsafePickleError` before anything runs.

Refusing foreign functions is not enough: numpy's own pickle constructors trust the file. A dtype's
pickled state carries its internal flags, so a file can declare an *object* dtype whose flags say
"no Python objects inside" and then supply raw bytes as its contents; numpy copies those bytes into
the array's object-pointer slots and the process crashes (segfault) the moment the array is
printed, compared or freed. Therefore no numpy constructor ever sees the file's data while it is
read: the numpy names resolve to inert placeholders (:class:`_Pending` subclasses) that only record
what the file says, and :func:`resolve_pending` turns them into arrays after the whole stream has
been read, building each one from scratch (``np.frombuffer`` on a freshly made boolean or numeric
dtype) after checking its dtype, shape and byte count. Object, string, structured, datetime, void
and extended-precision dtypes are refused: no checkpoint format needs them. The same placeholders
serve torch files holding numpy arrays (:data:`NUMPY_SAFE_GLOBALS` for
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import os
import pickle
import pickletools
import struct
import sys
from collections import OrderedDict
from typing import Any, BinaryIO, ClassVar

import numpy as np

from .errors import CheckpointError, CorruptCheckpointError, UnsafePickleError, redo_advice

__all__ = [
    "NUMPY_SAFE_GLOBALS",
    "SafeUnpickler",
    "check_torch_pickle",
    "load_pickle",
    "loads_pickle",
    "resolve_pending",
    "unsafe_pickle_error",
]

# The dtype specs numpy writes for boolean and numeric dtypes (`dtype.str` without its byte order):
# everything a model, an optimizer or an RNG state holds. Extended precision (f16/c32: longdouble,
# whose bytes mean different things on x86 and ARM, and which torch cannot hold) is left out.
_NUMERIC_SPECS = frozenset(
    {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"}
)
# A tuple, not a set: the file's value may be unhashable.
_BYTE_ORDERS = ("<", ">", "=", "|")
# numpy 1.x supports 32 dimensions, 2.x 64; weights have at most 5.
_MAX_DIMS = 32
# Checkpoints nest a handful of levels (optimizer state: state -> param id -> buffer name); a far
# deeper structure is not a checkpoint and would only exhaust the interpreter's stack.
_MAX_DEPTH = 64

_LATIN1_NAMES = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"}


# ------------------------------------------------------------------------------ placeholders


class _Pending:
    """A numpy value a file describes; :func:`resolve_pending` builds it once the file is read.

    Placeholders have no behaviour besides recording what the unpickler hands them, so nothing the
    file says can reach numpy before it has been checked, and a BUILD opcode that re-targets a
    placeholder later in the stream only changes what gets checked.
    """

    __slots__ = ()


class _PendingDType(_Pending):
    # `numpy.dtype` resolves to this class: pickles call `numpy.dtype("f4", False, True)` and then
    # BUILD it with the dtype's state (byte order, fields, sizes, flags).
    __slots__ = ("spec", "state")

    def __init__(self, spec: Any = None, align: Any = False, copy: Any = False) -> None:
        self.spec = spec
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _PendingArray(_Pending):
    # `numpy.ndarray` resolves to this class, so `_reconstruct(numpy.ndarray, (0,), b"b")` can make
    # one; BUILD then passes the array's state `(version, shape, dtype, is_fortran, data)`.
    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _PendingBuffer(_Pending):
    # Protocol 5: `_frombuffer(buffer, dtype, shape, order)`.
    __slots__ = ("buffer", "dtype", "order", "shape")

    def __init__(self, buffer: Any, dtype: Any, shape: Any, order: Any) -> None:
        self.buffer, self.dtype, self.shape, self.order = buffer, dtype, shape, order


class _PendingScalar(_Pending):
    # `scalar(dtype, data)`: a numpy scalar such as np.float32(1.0) or np.int64(7).
    __slots__ = ("data", "dtype")

    def __init__(self, dtype: Any, data: Any = None) -> None:
        self.dtype, self.data = dtype, data


def _reconstruct(subtype: Any, shape: Any = None, typecode: Any = None) -> _PendingArray:
    # numpy's `_reconstruct` makes an empty array of `subtype` that BUILD then fills; a subtype
    # other than ndarray (np.matrix, masked arrays) would need its own unpickling code.
    if subtype is not _PendingArray:
        raise UnsafePickleError(
            f"the pickle asks numpy to reconstruct a {subtype!r}; only plain numpy arrays are read"
        )
    return _PendingArray()


def _encode_latin1(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # Protocols 0-2 spell every non-empty `bytes` object (an array's raw data among them) as
    # `_codecs.encode(text, "latin1")`. The real `_codecs.encode` accepts any codec name (and
    # imports codec modules by name), so only the two text encodings pickle itself emits are
    # honoured here.
    if not isinstance(obj, str):
        raise UnsafePickleError(f"_codecs.encode called on {type(obj).__name__}, expected str")
    if not isinstance(encoding, str) or (
        encoding.lower() not in _LATIN1_NAMES and encoding.lower().replace("_", "-") != "utf-8"
    ):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    if errors != "strict":
        raise UnsafePickleError(f"_codecs.encode with errors={errors!r} is not allowed")
    return obj.encode(encoding, errors)


def _empty_bytes(*args: Any) -> bytes:
    # Protocols 0-2 spell `b""` (the data of a zero-size array) as `bytes()`. `bytes(n)` would
    # allocate n zero bytes on the file's say-so, so no argument is accepted.
    if args:
        raise UnsafePickleError("builtins.bytes called with arguments; pickle only writes bytes()")
    return b""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        # What numpy's pickles name (numpy 1.x and 2.x, protocols 0-5): the array class and dtype
        # constructor become placeholders, resolved and checked after loading.
        ("numpy", "ndarray"): _PendingArray,
        ("numpy", "dtype"): _PendingDType,
        # How protocols 0-2 write bytes objects (array data, numpy scalar data).
        ("_codecs", "encode"): _encode_latin1,
        ("builtins", "bytes"): _empty_bytes,
        # Containers without an opcode of their own before protocol 4 (sets) or at all
        # (OrderedDict: torch state dicts, and model-zoo files written from them).
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        # Deliberately absent: `builtins.bytearray` (protocol 5 has an opcode for it; the
        # constructor allocates `bytearray(n)` on request), `slice` and `complex` (no checkpoint
        # holds them; complex numpy data is an array), the `numpy.dtypes.*DType` classes (numpy
        # pickles dtype instances through `numpy.dtype`; only new variable-width dtypes such as
        # StringDType use their class).
    }
    # Files written by numpy 1.x name `numpy.core`, numpy 2.x `numpy._core`; both map to the same
    # placeholder makers, so the installed numpy's version does not matter.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = _PendingScalar
        # Protocol 5 writes contiguous arrays as `_frombuffer(buffer, dtype, shape, order)`.
        allowed[(f"{package}.numeric", "_frombuffer")] = _PendingBuffer
    return allowed


_ALLOWED = _allowed_globals()

# For `torch.serialization.safe_globals`: the same names for torch files that hold numpy arrays
# (`torch.save` writes protocol 2, so `bytes()` appears for empty arrays; torch already admits
# `_codecs.encode`, sets and OrderedDict itself). A result loaded with these must go through
# :func:`resolve_pending` before anything uses it.
NUMPY_SAFE_GLOBALS: list[tuple[Any, str]] = [
    (value, f"{module}.{name}")
    for (module, name), value in _ALLOWED.items()
    if module.startswith("numpy") or (module, name) == ("builtins", "bytes")
]


# Globals torch's weights-only unpickler admits on its own that no checkpoint needs and that act on
# the file's say-so: `bytearray(n)` allocates and zero-fills n bytes, so a file of a few dozen
# bytes could exhaust the machine's memory. torch consults its own list first, so they can only
# be refused by looking at the pickle before torch runs it.
_TORCH_REFUSED_GLOBALS = frozenset({"builtins.bytearray"})


def check_torch_pickle(data: bytes | BinaryIO, *, source: str) -> None:
    """Refuse a torch pickle (``data.pkl`` of a torch zip file) that names a refused global.

    Args:
        data: the pickle, as bytes or a binary stream (read only as far as its STOP opcode).
        source: the file, for the error message.

    Raises:
        UnsafePickleError: the pickle names ``builtins.bytearray``. A damaged stream is left for
            ``torch.load`` to report.
    """
    try:
        # torch's unpickler has no STACK_GLOBAL, so a GLOBAL opcode is the only way in.
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name != "GLOBAL":
                continue
            module, _, name = str(arg).partition(" ")
            full = f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"
            if full in _TORCH_REFUSED_GLOBALS:
                raise unsafe_pickle_error(
                    source,
                    f"the pickle references {full}, which would allocate as much memory as the "
                    "file asks for",
                )
    except UnsafePickleError:
        raise
    except Exception:  # malformed: torch.load reports it in its own terms
        return


# -------------------------------------------------------------------------------- resolving


def _where(path: tuple[Any, ...]) -> str:
    return "the top-level object" if not path else "entry " + "".join(f"[{k!r}]" for k in path)


class _Resolver:
    """Replaces placeholders by checked numpy values throughout a loaded object, in place."""

    def __init__(self, source: str) -> None:
        self.source = source
        # id -> (original, resolved): shared references stay shared, built once.
        self.done: dict[int, tuple[Any, Any]] = {}
        self.active: set[int] = set()  # containers being walked (a repeat is a cycle)
        self.dtypes: dict[int, tuple[_PendingDType, np.dtype]] = {}

    # errors --------------------------------------------------------------------------------

    def corrupt(self, path: tuple[Any, ...], detail: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{self.source} is corrupt or not a checkpoint: {_where(path)} {detail}. "
            f"{redo_advice(self.source)}"
        )

    def refuse(self, path: tuple[Any, ...], spec: Any, kind: str = "") -> UnsafePickleError:
        try:
            kind = kind or {
                "O": "Python objects",
                "U": "unicode strings",
                "S": "byte strings",
                "V": "a structured/void type",
                "M": "datetimes",
                "m": "timedeltas",
                "f": "extended-precision floats",
                "c": "extended-precision complex numbers",
            }.get(np.dtype(spec).kind, "a non-numeric type")
        except Exception:
            kind = "an unknown type"
        return UnsafePickleError(
            f"Refusing to load {self.source}: {_where(path)} is a numpy value of dtype {spec!r} "
            f"({kind}). Only boolean and numeric arrays are read from checkpoint files: model "
            "weights need nothing else, and the raw bytes of an object array would be used as "
            "memory addresses and crash the process. Nothing in the file was used; if it comes "
            "from a source you trust, re-save its weights as numeric arrays."
        )

    # numpy values --------------------------------------------------------------------------

    def dtype(self, pending: Any, path: tuple[Any, ...]) -> np.dtype:
        if not isinstance(pending, _PendingDType):
            raise self.corrupt(path, f"has a {type(pending).__name__} where a dtype belongs")
        cached = self.dtypes.get(id(pending))
        if cached is not None:
            return cached[1]
        spec = getattr(pending, "spec", None)
        state = getattr(pending, "state", None)
        if not isinstance(spec, str):
            raise self.corrupt(path, f"has a dtype named by a {type(spec).__name__}")
        if spec not in _NUMERIC_SPECS:
            raise self.refuse(path, spec)
        dtype = np.dtype(spec)
        if state is not None:
            # (version, byte order, subarray, names, fields, elsize, alignment, flags[, meta]),
            # or without names (6 items) from old numpy. Only the byte order is used: the dtype is
            # made afresh from its spec, so sizes and flags in the file never reach numpy.
            if not isinstance(state, tuple) or not 6 <= len(state) <= 9:
                raise self.corrupt(path, "has a dtype with a malformed state")
            byte_order, structure = state[1], state[2 : 5 if len(state) > 6 else 4]
            if any(part is not None for part in structure):
                raise self.refuse(path, spec, "with fields or a subarray")
            if byte_order not in _BYTE_ORDERS:
                raise self.corrupt(path, f"has a dtype with byte order {byte_order!r}")
            if byte_order in "<>" and dtype.itemsize > 1 and dtype.kind != "b":
                dtype = dtype.newbyteorder(byte_order)
        self.dtypes[id(pending)] = (pending, dtype)
        return dtype

    def array(
        self, data: Any, dtype: np.dtype, shape: Any, fortran: bool, path: tuple[Any, ...]
    ) -> np.ndarray:
        if isinstance(data, str):  # Python 2 pickles read with encoding="latin1"
            try:
                data = data.encode("latin1")
            except UnicodeEncodeError:
                raise self.corrupt(path, "has array data that is not latin1 text") from None
        if not isinstance(data, bytes | bytearray):
            raise self.corrupt(path, f"has array data of type {type(data).__name__}")
        if (
            not isinstance(shape, tuple)
            or len(shape) > _MAX_DIMS
            or not all(type(n) is int and 0 <= n < 2**63 for n in shape)
        ):
            raise self.corrupt(path, f"has an array of shape {shape!r:.80}")
        count = math.prod(shape)
        if count * dtype.itemsize != len(data):
            raise self.corrupt(
                path,
                f"is an array of shape {shape} and dtype {dtype} ({count * dtype.itemsize} "
                f"bytes) with {len(data)} bytes of data",
            )
        try:
            flat = np.frombuffer(data, dtype=dtype) if count else np.empty(0, dtype=dtype)
            array = flat.reshape(shape, order="F" if fortran else "C")
        except ValueError as exc:  # a zero-size shape whose total size overflows
            raise self.corrupt(path, f"has an array of shape {shape} ({exc})") from None
        if dtype.kind == "b":
            # Any nonzero byte reads as True; make the bytes canonical 0/1 as numpy itself writes.
            return array.view(np.uint8) != 0
        # `bytes` data gives a read-only view; arrays from a pickle are normally writable.
        return array if array.flags.writeable else array.copy(order="K")

    def pending(self, obj: _Pending, path: tuple[Any, ...]) -> Any:
        if isinstance(obj, _PendingDType):
            return self.dtype(obj, path)
        if isinstance(obj, _PendingScalar):
            dtype = self.dtype(obj.dtype, path)
            return self.array(obj.data, dtype, (), False, path)[()]
        if isinstance(obj, _PendingBuffer):
            if obj.order not in ("C", "F"):
                raise self.corrupt(path, f"is an array with memory order {obj.order!r:.20}")
            dtype = self.dtype(obj.dtype, path)
            return self.array(obj.buffer, dtype, obj.shape, obj.order == "F", path)
        state = getattr(obj, "state", None)  # _PendingArray
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # (version, shape, dtype, is_fortran, data)
        if not isinstance(state, tuple) or len(state) != 4:
            raise self.corrupt(path, "is a numpy array without its shape, dtype and data")
        shape, pending_dtype, fortran, data = state
        dtype = self.dtype(pending_dtype, path)
        if type(fortran) not in (bool, int):
            raise self.corrupt(path, "is an array with a malformed memory order")
        return self.array(data, dtype, shape, bool(fortran), path)

    # containers ----------------------------------------------------------------------------

    def __call__(self, obj: Any, path: tuple[Any, ...] = ()) -> Any:
        pending = isinstance(obj, _Pending)
        container = isinstance(obj, dict) or type(obj) in (list, tuple, set, frozenset)
        if not (pending or container):
            return obj  # str, numbers, None, tensors, ...
        key = id(obj)
        if key in self.done:
            return self.done[key][1]
        if pending:
            result = self.pending(obj, path)
            self.done[key] = (obj, result)
            return result
        if key in self.active:
            raise self.corrupt(path, "contains itself")
        if len(path) >= _MAX_DEPTH:
            raise self.corrupt(path, f"is nested more than {_MAX_DEPTH} levels deep")
        self.active.add(key)
        result = obj
        if isinstance(obj, dict):  # also OrderedDict (keeps torch's `_metadata` attribute)
            items = [(self(k, (*path, k)), self(v, (*path, k))) for k, v in obj.items()]
            if any(new is not old for (new, _), old in zip(items, obj, strict=True)):
                obj.clear()
                try:
                    obj.update(items)
                except TypeError:
                    raise self.corrupt(path, "has a numpy array as a dict key") from None
            else:
                for k, v in items:
                    if v is not obj[k]:
                        obj[k] = v
        elif type(obj) is list:
            for i, v in enumerate(obj):
                obj[i] = self(v, (*path, i))
        else:  # tuple, set, frozenset: immutable or hashed, rebuilt when something changed
            items = [self(v, (*path, i)) for i, v in enumerate(obj)]
            if any(new is not old for new, old in zip(items, obj, strict=True)):
                try:
                    result = type(obj)(items)
                except TypeError:
                    raise self.corrupt(path, "has a numpy array in a set") from None
        self.active.discard(key)
        self.done[key] = (obj, result)  # holding `obj` keeps its id from being reused
        return result


def resolve_pending(obj: Any, *, source: str) -> Any:
    """Replace the numpy placeholders of a freshly unpickled object by checked numpy values.

    Dicts and lists are updated in place (a torch state dict keeps its ``_metadata``); tuples and
    sets are rebuilt where they held placeholders.

    Args:
        obj: what :class:`SafeUnpickler` or ``torch.load`` with :data:`NUMPY_SAFE_GLOBALS`
            returned.
        source: the file, for error messages.

    Returns:
        `obj` with every array, scalar and dtype built: arrays of a boolean or numeric dtype with
        exactly the bytes their shape needs, writable, in the file's memory order.

    Raises:
        UnsafePickleError: a value has an object, string, structured or other non-numeric dtype.
        CorruptCheckpointError: a value is malformed (data of the wrong size, a bad shape, a
            structure that contains itself or nests more than 64 levels deep).
    """
    try:
        return _Resolver(source)(obj)
    except (CheckpointError, Warning):
        raise
    except Exception as exc:
        # Every value walked here came from the file; anything the checks above did not
        # anticipate is still the file's doing.
        raise CorruptCheckpointError(
            f"{source} is corrupt or not a checkpoint ({type(exc).__name__}: {str(exc)[:200]}). "
            f"{redo_advice(source)}"
        ) from exc


# ---------------------------------------------------------------------------------- loading


class _BoundedReader:
    """A binary file whose reads never ask for more than what is left in it.

    A damaged length field can announce exabytes; a plain ``file.read(n)`` allocates n bytes
    before finding out how many there are.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        try:
            self._left = os.fstat(stream.fileno()).st_size - stream.tell()
        except (AttributeError, OSError, io.UnsupportedOperation):  # in memory: already bounded
            self._left = sys.maxsize

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(self._left if n < 0 or n > self._left else n)
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._stream.readline()
        self._left -= len(line)
        return line


class SafeUnpickler(pickle._Unpickler):
    """An unpickler that resolves only numpy's array/dtype/scalar names and containers.

    Dicts, lists, tuples, strings, numbers, booleans and ``None`` need no global lookup and load
    as usual. Any other global (``os.system``, ``builtins.eval``, ``torch._utils...``) raises
    :class:`UnsafePickleError` at the moment the pickle names it, before it could be called.
    numpy values come out as placeholders; :func:`load_pickle` / :func:`loads_pickle` pass the
    result through :func:`resolve_pending`, which is required before using it.

    It is the pure-Python unpickler (the one ``pickle`` falls back to without its C accelerator):
    the C one keeps its memo in an array sized by the largest index the file names, so a
    ten-byte ``LONG_BINPUT 2**31`` makes it allocate and clear 32 GB. Here the memo is a dict,
    reads are bounded by the file (:class:`_BoundedReader`) and ``BYTEARRAY8`` allocates only
    the bytes it actually read; the cost is about 1.5x the C unpickler's time, which the array
    copies dominate anyway.
    """

    def __init__(self, file: BinaryIO, **kwargs: Any) -> None:
        super().__init__(_BoundedReader(file), **kwargs)  # type: ignore[arg-type]

    def _load_bytearray8(self) -> None:
        # The stock version allocates and zero-fills `bytearray(size)` before reading.
        (size,) = struct.unpack("<Q", self.read(8))
        data = self.read(size)
        if len(data) != size:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(bytearray(data))

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8

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


def unsafe_pickle_error(source: str, detail: str) -> UnsafePickleError:
    """The error for a pickle that names a global outside the allow-list (nothing was run)."""
    return UnsafePickleError(
        f"Refusing to load {source}: {detail}. Unpickling it could run arbitrary code, so "
        "nothing in it was executed. Only use checkpoints from sources you trust; a trusted "
        "file can be converted to a plain state dict (name -> array) and saved again."
    )


def _load(stream: BinaryIO, source: str) -> Any:
    try:
        data = SafeUnpickler(stream, encoding="latin1").load()
    except UnsafePickleError as exc:
        raise unsafe_pickle_error(source, str(exc)) from None
    except (CheckpointError, Warning):  # a warning raised as an error is not about the file
        raise
    except Exception as exc:
        # Only the allow-listed constructors and the placeholders run while unpickling, so any
        # exception (EOFError, UnpicklingError, TypeError from a wrong argument count, MemoryError
        # from an absurd length field, ...) is a consequence of damaged or foreign bytes.
        raise CorruptCheckpointError(
            f"{source} is truncated or corrupt and cannot be read as a pickle "
            f"({type(exc).__name__}: {str(exc)[:200]}). {redo_advice(source)}"
        ) from exc
    return resolve_pending(data, source=source)


def load_pickle(path: str | os.PathLike[str]) -> Any:
    """Read a pickle file with :class:`SafeUnpickler` (``encoding="latin1"`` like detectron2).

    Args:
        path: the file to read.

    Returns:
        The unpickled object: nested dicts/lists/tuples of numpy arrays (boolean or numeric
        dtypes), numpy scalars, strings, bytes and numbers.

    Raises:
        UnsafePickleError: the file asks for any other Python object (nothing was executed), or
            holds a numpy value of a non-numeric dtype.
        CorruptCheckpointError: the file is truncated, not a pickle, or holds malformed arrays.
    """
    with open(path, "rb") as f:
        return _load(f, os.fspath(path))


def loads_pickle(data: bytes, *, source: str = "<bytes>") -> Any:
    """Like :func:`load_pickle` for bytes in memory; `source` names them in error messages."""
    return _load(io.BytesIO(data), source)
