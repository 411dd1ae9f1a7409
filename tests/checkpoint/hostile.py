"""Hostile, damaged and legitimate checkpoint bytes for the loader tests and the fuzz tests."""

from __future__ import annotations

import functools
import io
import pickle
import random
import struct
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atrous.checkpoint import Checkpointer

from .toy import ToySegmentor, numpy_state

# The installed numpy's own constructors, so pickles name them as numpy itself would.
RECONSTRUCT = np.zeros(1).__reduce__()[0]
SCALAR = np.float32(1).__reduce__()[0]
FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]


class Reduce:
    """Pickles as whatever `__reduce__` tuple it is given (nothing of this class is written)."""

    def __init__(self, *value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return self.value


def dtype(spec: str, *, byteorder: str = "|", flags: int = 0, fields: Any = None) -> Reduce:
    """A pickled numpy dtype with a state of our choosing (numpy trusts the flags it finds)."""
    names = None if fields is None else tuple(fields)
    return Reduce(np.dtype, (spec, False, True), (3, byteorder, None, names, fields, -1, -1, flags))


# An object dtype whose state says "holds no Python objects" (flags 0): numpy then copies raw file
# bytes into the array's object-pointer slots instead of refusing them.
def object_array_via_reconstruct(raw: bytes = b"\x41" * 16) -> Reduce:
    state = (1, (len(raw) // 8,), dtype("O8"), False, raw)
    return Reduce(RECONSTRUCT, (np.ndarray, (0,), b"b"), state)


def object_array_via_frombuffer(raw: bytes = b"\x41" * 16) -> Reduce:
    return Reduce(FROMBUFFER, (raw, dtype("O8"), (len(raw) // 8,), "C"))


def object_scalar(raw: bytes = b"\x41" * 8) -> Reduce:
    return Reduce(SCALAR, (dtype("O8"), raw))


SEGFAULT_PAYLOADS = {
    "reconstruct": object_array_via_reconstruct,
    "frombuffer": object_array_via_frombuffer,
    "scalar": object_scalar,
}


def zoo_dict(value: Any, key: str = "sem_seg_head.predictor.bias") -> dict[str, Any]:
    """A detectron2 model-zoo dict with `value` in place of one weight."""
    weights: dict[str, Any] = dict(numpy_state(ToySegmentor()))
    weights[key] = value
    return {"model": weights, "__author__": "test", "matching_heuristics": True}


def as_pkl(obj: Any, protocol: int = 2) -> bytes:
    return pickle.dumps(obj, protocol=protocol)


def as_pth(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# -------------------------------------------------------------------------- fuzzing corpus


CORPUS_NAMES = (
    "zoo_p2",
    "zoo_p3",
    "zoo_p4",
    "zoo_p5",
    "oddities_p2",
    "oddities_p5",
    "numpy1_p2",
    "caffe2_blobs",
    "ordered_p4",
    "state_dict_pth",
    "numpy_in_pth",
    "atrous_pth",
)


@functools.cache
def corpus() -> dict[str, tuple[str, bytes]]:
    """Small real checkpoints of every supported kind: name -> (file suffix, bytes)."""
    torch.manual_seed(0)
    model = ToySegmentor()
    weights = numpy_state(model)
    zoo = {"model": weights, "__author__": "test", "matching_heuristics": True}
    oddities = {
        "model": {
            **weights,
            "be": np.arange(3, dtype=">f4"),
            "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
            "mask": np.array([True, False]),
            "empty": np.zeros((0, 3), np.float32),
            "step": np.int64(7),
        },
        "__author__": "test",
        "rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "names": {"a", "b"},
    }
    out = {f"zoo_p{p}": (".pkl", as_pkl(zoo, p)) for p in (2, 3, 4, 5)}
    out["oddities_p2"] = (".pkl", as_pkl(oddities, 2))
    out["oddities_p5"] = (".pkl", as_pkl(oddities, 5))
    # numpy 1.x wrote `numpy.core`; protocol 2 spells module names as text lines.
    out["numpy1_p2"] = (".pkl", as_pkl(zoo, 2).replace(b"numpy._core", b"numpy.core"))
    blobs = {k.replace(".", "_"): v for k, v in weights.items()}
    out["caffe2_blobs"] = (".pkl", as_pkl({"blobs": blobs, "cfg": "MODEL: {}"}, 2))
    out["state_dict_pth"] = (".pth", as_pth(model.state_dict()))
    out["numpy_in_pth"] = (".pth", as_pth({"model": oddities["model"], "rng": oddities["rng"]}))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    with tempfile.TemporaryDirectory() as tmp:
        path = Checkpointer(model, tmp, optimizer=opt, scheduler=sched, save_to_disk=True).save(
            "model_0000001", iteration=1
        )
        assert path is not None
        out["atrous_pth"] = (".pth", Path(path).read_bytes())
    out["ordered_p4"] = (".pkl", as_pkl(OrderedDict(weights), 4))
    assert sorted(out) == sorted(CORPUS_NAMES)
    return out


def zip_member(data: bytes, suffix: str = "data.pkl") -> tuple[str, bytes] | None:
    """The pickle inside a torch zip file: (member name, bytes); None for other files."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            name = next(n for n in z.namelist() if n.endswith(suffix))
            return name, z.read(name)
    except (zipfile.BadZipFile, StopIteration):
        return None


def replace_zip_member(data: bytes, name: str, member: bytes) -> bytes:
    """`data` (a torch zip file) with member `name` replaced, everything else as it was."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, member if info.filename == name else src.read(info))
    return out.getvalue()


def mutate(data: bytes, ops: list[tuple[str, int, int, bytes]]) -> bytes:
    """Apply byte-level mutations: (kind, position, size, payload) with kind in
    flip / set / truncate / delete / insert / duplicate; positions wrap around the data."""
    buf = bytearray(data)
    for kind, pos, size, payload in ops:
        n = len(buf)
        pos = pos % (n + 1)
        if kind == "flip" and n:
            buf[pos % n] ^= 1 << (size % 8)
        elif kind == "set" and n:
            buf[pos % n] = size % 256
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "delete":
            del buf[pos : pos + size]
        elif kind == "insert":
            buf[pos:pos] = payload
        elif kind == "duplicate":
            buf[pos:pos] = buf[pos : pos + size]
    return bytes(buf)


# Opcode fragments for random pickle streams: structure, numbers, strings and every global the
# loaders admit, plus some they refuse.
GLOBALS = [
    b"cnumpy\ndtype\n",
    b"cnumpy\nndarray\n",
    b"cnumpy.core.multiarray\n_reconstruct\n",
    b"cnumpy._core.multiarray\nscalar\n",
    b"cnumpy.core.numeric\n_frombuffer\n",
    b"c_codecs\nencode\n",
    b"c__builtin__\nbytes\n",
    b"c__builtin__\nset\n",
    b"c__builtin__\nfrozenset\n",
    b"ccollections\nOrderedDict\n",
    b"cbuiltins\nbytearray\n",
    b"cos\nsystem\n",
    b"ctorch._utils\n_rebuild_tensor_v2\n",
]
OPCODES = [
    b"(",  # MARK
    b"}",  # EMPTY_DICT
    b"]",  # EMPTY_LIST
    b")",  # EMPTY_TUPLE
    b"t",  # TUPLE
    b"\x85",  # TUPLE1
    b"\x86",  # TUPLE2
    b"\x87",  # TUPLE3
    b"R",  # REDUCE
    b"b",  # BUILD
    b"\x81",  # NEWOBJ
    b"s",  # SETITEM
    b"u",  # SETITEMS
    b"a",  # APPEND
    b"e",  # APPENDS
    b"0",  # POP
    b"2",  # DUP
    b"N",  # NONE
    b"\x88",  # NEWTRUE
    b"\x89",  # NEWFALSE
    b"\x8f",  # EMPTY_SET
    b"\x90",  # ADDITEMS
    b"\x91",  # FROZENSET
    b"\x94",  # MEMOIZE
]
STRINGS = ["O8", "f4", "f8", "b1", "i8", "u1", "V8", "U2", "S3", "M8", "f16", "f4,O", "<", ">"]
STRINGS += ["|", "=", "C", "F", "latin1", "rot13", "model", "__author__", "w", ""]


def binunicode(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def short_binstring(raw: bytes) -> bytes:
    return b"U" + bytes([len(raw)]) + raw


def short_binbytes(raw: bytes) -> bytes:
    return b"C" + bytes([len(raw)]) + raw


def binint(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def binfloat(value: float) -> bytes:
    return b"G" + struct.pack(">d", value)


def _body(obj: Any) -> bytes:
    """`obj` pickled with protocol 2, without the PROTO header and the STOP opcode."""
    return pickle.dumps(obj, protocol=2)[2:-1]


# Whole values as fragments, so random streams also combine well-formed numpy pieces.
TEMPLATES = [
    _body(np.ones(2, np.float32)),
    _body(np.float32(1)),
    _body(np.dtype("f8")),
    _body(np.zeros(0)),
    _body(object_array_via_reconstruct()),
    _body(object_array_via_frombuffer()),
    _body(object_scalar()),
    _body(dtype("O8")),
    _body({"model": {}, "__author__": "x"}),
]
