"""The restricted unpickler reads model-zoo files and refuses anything that could run code."""

from __future__ import annotations

import math
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from atrous.checkpoint import (
    CorruptCheckpointError,
    UnsafePickleError,
    load_pickle,
    loads_pickle,
)

from . import hostile
from .load_worker import LoadWorker


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evaluates:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_arrays_scalars_and_containers_round_trip(protocol):
    obj = {
        "model": OrderedDict(
            w=np.arange(24, dtype=np.float32).reshape(2, 3, 4),
            t=np.arange(6, dtype=np.float64).reshape(2, 3).T,  # non-contiguous
            h=np.ones(3, dtype=np.float16),
            n=np.int64(7),
        ),
        "__author__": "someone",
        "tags": {"a", "b"},
        "nested": [(1, 2.5, None, True), b"bytes"],
    }
    out = loads_pickle(pickle.dumps(obj, protocol=protocol))
    for key, value in obj["model"].items():
        assert np.array_equal(out["model"][key], value)
        assert np.asarray(out["model"][key]).dtype == np.asarray(value).dtype
    assert out["tags"] == {"a", "b"} and out["nested"] == obj["nested"]


def test_reads_the_reference_model_zoo_file(reference_dir):
    path = reference_dir / "small_v3plus.pkl"
    with open(path, "rb") as f:
        expected = pickle.load(f, encoding="latin1")
    data = load_pickle(path)
    assert data["__author__"] == expected["__author__"]
    assert data["matching_heuristics"] is True
    assert list(data["model"]) == list(expected["model"])
    for key, value in expected["model"].items():
        np.testing.assert_array_equal(data["model"][key], value)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_reduce_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    payload = {"model": {"w": np.zeros(2), "x": _RunsShell(marker)}, "__author__": "x"}
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(UnsafePickleError) as info:
        load_pickle(path)
    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message
    assert "system" in message  # names what it asked for (posix.system / nt.system)
    assert "nothing in it was executed" in message


def test_eval_is_refused():
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        loads_pickle(pickle.dumps(_Evaluates(), protocol=2))


def test_arbitrary_codec_through_codecs_encode_is_refused():
    # `_codecs.encode` is admitted for protocol-2 bytes, but only with latin1 / utf-8.
    crafted = b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\x06\x00\x00\x00rot_13\x86R."
    with pytest.raises(UnsafePickleError, match="rot_13"):
        loads_pickle(crafted)


def test_truncated_file_names_the_file(tmp_path, reference_dir):
    data = (reference_dir / "small_v3plus.pkl").read_bytes()
    path = tmp_path / "model_final.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt") as info:
        load_pickle(path)
    assert str(path) in str(info.value)


def test_garbage_is_corrupt_not_unsafe(tmp_path):
    path = tmp_path / "noise.pkl"
    path.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises((CorruptCheckpointError, UnsafePickleError)):
        load_pickle(path)


# ------------------------------------------------------------- numpy values built safely


def _zoo_value(data):
    return data["model"]["sem_seg_head.predictor.bias"]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_array_layouts_and_byte_orders_survive(protocol):
    values = {
        "big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "empty": np.zeros((0, 3), np.float32),  # protocol 2 spells its data as bytes()
        "mask": np.array([True, False, True]),
        "uint32": np.arange(4, dtype=np.uint32),
        "complex": np.array([1 + 2j], np.complex64),
        "half": np.float16(0.5),
        "rng": np.random.get_state(),  # ('MT19937', uint32 array, int, int, float)
    }
    out = loads_pickle(pickle.dumps(values, protocol=protocol))
    for key, value in values.items():
        if key == "rng":
            assert out[key][0] == "MT19937" and out[key][2:] == value[2:]
            np.testing.assert_array_equal(out[key][1], value[1])
            continue
        assert np.asarray(out[key]).dtype == np.asarray(value).dtype, key
        np.testing.assert_array_equal(out[key], value)
    assert out["fortran"].flags.f_contiguous
    assert all(np.asarray(out[k]).flags.writeable for k in values if k not in ("half", "rng"))


def test_numpy_1_module_names_and_python_2_text_data():
    # numpy 1.x writes `numpy.core.*`; Python 2 pickles hold array data as `str`, which
    # encoding="latin1" turns into text that numpy reads back as latin1 bytes.
    data = np.arange(4, dtype="<f4")
    raw = data.tobytes().decode("latin1")
    arr = hostile.Reduce(
        hostile.RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (4,), np.dtype("f4"), False, raw)
    )
    scalar = hostile.Reduce(hostile.SCALAR, (np.dtype("i8"), (7).to_bytes(8, "little").decode()))
    blob = pickle.dumps({"a": arr, "s": scalar}, protocol=2).replace(b"numpy._core", b"numpy.core")
    assert b"numpy.core.multiarray" in blob
    out = loads_pickle(blob)
    np.testing.assert_array_equal(out["a"], data)
    assert out["s"] == 7 and isinstance(out["s"], np.int64)


def test_nonzero_bool_bytes_become_canonical_booleans():
    raw = bytes([0, 1, 2, 255])
    arr = hostile.Reduce(hostile.FROMBUFFER, (raw, hostile.dtype("b1"), (4,), "C"))
    out = loads_pickle(pickle.dumps(arr, protocol=2))
    assert out.tolist() == [False, True, True, True]
    assert out.view(np.uint8).tolist() == [0, 1, 1, 1]


def test_shared_arrays_stay_shared():
    a = np.ones(3, np.float32)
    out = loads_pickle(pickle.dumps({"x": a, "y": a, "t": (a, a)}, protocol=2))
    assert out["x"] is out["y"] and out["t"][0] is out["x"]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (np.array(["ab", "c"]), "dtype 'U2' (unicode strings)"),
        (np.array([b"ab"]), "dtype 'S2' (byte strings)"),
        (np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]), "(a structured/void type)"),
        (np.zeros(2, dtype="M8[s]"), "(datetimes)"),
        (np.zeros(2, dtype=np.longdouble), "(extended-precision floats)"),
        (np.array([None, 1], dtype=object), "(Python objects)"),
        (hostile.dtype("f4", fields={"a": (np.dtype("f4"), 0)}), "with fields or a subarray"),
    ],
)
def test_non_numeric_dtypes_are_refused_naming_the_entry(value, fragment):
    with pytest.raises(UnsafePickleError) as info:
        loads_pickle(pickle.dumps(hostile.zoo_dict(value), protocol=2), source="zoo.pkl")
    message = str(info.value)
    assert message.startswith("Refusing to load zoo.pkl: entry ['model']")
    assert "['sem_seg_head.predictor.bias']" in message and fragment in message
    assert "Only boolean and numeric arrays are read" in message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (
            hostile.Reduce(hostile.FROMBUFFER, (b"\0" * 7, hostile.dtype("f4"), (2,), "C")),
            "is an array of shape (2,) and dtype float32 (8 bytes) with 7 bytes of data",
        ),
        (
            hostile.Reduce(hostile.FROMBUFFER, (b"", hostile.dtype("f4"), (-1,), "C")),
            "has an array of shape (-1,)",
        ),
        (
            hostile.Reduce(hostile.FROMBUFFER, (b"", hostile.dtype("f4"), (0, 2**62, 8), "C")),
            "has an array of shape (0, 4611686018427387904, 8)",
        ),
        (
            hostile.Reduce(hostile.FROMBUFFER, (b"", hostile.dtype("f4"), (0,), "K")),
            "memory order 'K'",
        ),
        (hostile.Reduce(hostile.SCALAR, (hostile.dtype("f8"), b"\0" * 3)), "with 3 bytes of data"),
        (
            hostile.Reduce(hostile.RECONSTRUCT, (np.ndarray, (0,), b"b")),
            "is a numpy array without its shape, dtype and data",
        ),
        (
            hostile.Reduce(hostile.RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (1,), 5, 0, b"")),
            "has a int where a dtype belongs",
        ),
        (hostile.dtype("f4", byteorder="?"), "byte order '?'"),
    ],
)
def test_malformed_arrays_are_corrupt_naming_the_entry(value, fragment):
    with pytest.raises(CorruptCheckpointError) as info:
        loads_pickle(pickle.dumps(hostile.zoo_dict(value), protocol=2), source="zoo.pkl")
    message = str(info.value)
    assert message.startswith("zoo.pkl is corrupt or not a checkpoint: entry ['model']")
    assert fragment in message and "Delete it" in message


def test_reconstructing_a_subclass_is_refused():
    value = hostile.Reduce(hostile.RECONSTRUCT, (np.dtype, (0,), b"b"))
    with pytest.raises(UnsafePickleError, match="only plain numpy arrays are read"):
        loads_pickle(pickle.dumps(value, protocol=2))


def test_structures_that_contain_themselves_or_nest_too_deep_are_corrupt():
    loop: list = []
    loop.append(loop)
    with pytest.raises(CorruptCheckpointError, match=r"entry \[0\] contains itself"):
        loads_pickle(pickle.dumps(loop))
    deep: list = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(CorruptCheckpointError, match="nested more than 64 levels deep"):
        loads_pickle(pickle.dumps(deep))


def test_bytes_constructor_with_a_size_is_refused():
    # `bytes(n)` would allocate n bytes on the file's say-so; pickle only ever writes bytes().
    crafted = b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R."
    with pytest.raises(UnsafePickleError, match=r"builtins\.bytes called with arguments"):
        loads_pickle(crafted)


@pytest.mark.parametrize("name", ["bytearray", "slice", "complex", "eval", "getattr"])
def test_builtins_outside_the_allow_list_are_refused(name):
    crafted = b"\x80\x02c__builtin__\n" + name.encode() + b"\n)R."
    with pytest.raises(UnsafePickleError, match=rf"builtins\.{name}, which is not"):
        loads_pickle(crafted)


# ------------------------------------------------ crashes, hangs: in a separate process


@pytest.fixture(scope="module")
def load_worker():
    worker = LoadWorker()
    yield worker
    worker.close()


def _assert_clean(answer: dict, what: object = "") -> None:
    """Loaded with numeric arrays only, or refused with our errors; never a crash or a hang."""
    outcome = answer["outcome"]
    event(outcome)  # shown by --hypothesis-show-statistics
    detail = answer.get("traceback") or answer.get("stderr") or answer.get("message")
    assert outcome in ("ok", "UnsafePickleError", "CorruptCheckpointError"), (
        f"{outcome} for {what!r:.300}:\n{detail}"
    )
    # Inputs are at most a few hundred kB: a load that makes the process touch far more memory
    # is an amplification a hostile file could use to exhaust the machine.
    assert answer.get("peak_growth_mb", 0) < 512, (answer, what)
    if outcome == "ok":
        assert all(np.dtype(d).kind in "biufc" for d in answer["dtypes"]), answer["dtypes"]
    else:
        message = answer["message"]
        assert "input." in message, message  # names the file
        assert "weights_only=False" not in message, message


def test_the_crash_payloads_really_crash_an_unrestricted_load(tmp_path):
    # Without the restricted loader numpy builds the object array and the process dies on use;
    # this keeps the regression tests below honest.
    # No core file of the intended crash (RLIMIT_CORE 0 in the child).
    script = (
        "import pickle, resource, sys; "
        "core = resource.RLIMIT_CORE; "
        "resource.setrlimit(core, (0, resource.getrlimit(core)[1])); "
        "print(repr(pickle.loads(sys.stdin.buffer.read())))"
    )
    payload = pickle.dumps(hostile.object_array_via_reconstruct(), protocol=2)
    result = subprocess.run(
        [sys.executable, "-c", script], input=payload, capture_output=True, timeout=60
    )
    if result.returncode >= 0:
        pytest.skip(f"numpy {np.__version__} no longer crashes on this payload")
    assert result.returncode == -signal.SIGSEGV


@pytest.mark.parametrize("route", sorted(hostile.SEGFAULT_PAYLOADS))
@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_object_dtype_payloads_are_refused_without_crashing(load_worker, route, suffix):
    data = hostile.zoo_dict(hostile.SEGFAULT_PAYLOADS[route]())
    blob = hostile.as_pkl(data) if suffix == ".pkl" else hostile.as_pth(data)
    answer = load_worker.load(blob, suffix=suffix)
    assert answer["outcome"] == "UnsafePickleError", answer
    message = answer["message"]
    assert message.startswith("Refusing to load ") and f"input{suffix}" in message
    assert "entry ['model']['sem_seg_head.predictor.bias']" in message
    assert "dtype 'O8' (Python objects)" in message and "crash the process" in message


@pytest.mark.slow
def test_the_worker_reports_crashes_and_hangs_and_recovers(load_worker):
    # The harness itself: an unrestricted pickle.loads of the crash payload kills the worker,
    # a pickle that sleeps outlives the timeout; both are reported and the next load works.
    payload = hostile.as_pkl(hostile.object_array_via_reconstruct())
    crash = load_worker.load(payload, loader="pickle")
    assert crash["outcome"] == "crash" and crash["returncode"] == -signal.SIGSEGV, crash
    assert "Segmentation fault" in crash["stderr"]  # faulthandler's report
    load_worker.load(hostile.as_pkl({}), loader="pickle")  # start a fresh worker
    timeout, load_worker.timeout = load_worker.timeout, 1.0
    try:
        hang = load_worker.load(pickle.dumps(hostile.Reduce(time.sleep, (60,))), loader="pickle")
    finally:
        load_worker.timeout = timeout
    assert hang["outcome"] == "hang", hang
    assert load_worker.load(hostile.corpus()["zoo_p2"][1], suffix=".pkl")["outcome"] == "ok"


@pytest.mark.parametrize("index", [2**27, 2**31 - 1])
def test_a_huge_memo_index_costs_no_memory(load_worker, index):
    # C's unpickler sizes its memo array by the largest index the file names: this 9-byte file
    # would make it allocate and clear index * 16 bytes (2 GB / 32 GB).
    answer = load_worker.load(b"\x80\x02]r" + struct.pack("<I", index) + b".", suffix=".pkl")
    assert answer["outcome"] == "CorruptCheckpointError", answer  # a list is not a checkpoint
    assert "holds a list ([])" in answer["message"]
    assert answer["peak_growth_mb"] < 100, answer


def test_a_huge_bytearray_length_is_truncation_not_an_allocation():
    # Protocol 5's BYTEARRAY8 names its length first; the stock pure-Python unpickler would
    # allocate and zero-fill it before noticing the file ends.
    crafted = b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"abc."
    with pytest.raises(CorruptCheckpointError, match="pickle data was truncated"):
        loads_pickle(crafted)


def test_every_corpus_file_loads(load_worker):
    for name, (suffix, blob) in hostile.corpus().items():
        answer = load_worker.load(blob, suffix=suffix)
        assert answer["outcome"] == "ok" and "model_error" not in answer, (name, answer)


_byte_op = st.tuples(
    st.sampled_from(["flip", "set", "truncate", "delete", "insert", "duplicate"]),
    st.integers(0, 1 << 16),
    st.integers(0, 300),
    st.one_of(
        st.binary(max_size=16),
        st.sampled_from(hostile.GLOBALS),
        st.just(hostile.as_pkl(hostile.object_array_via_frombuffer())[2:-1]),
        st.just(b"O8"),
    ),
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(hostile.CORPUS_NAMES),
    inner=st.booleans(),
    ops=st.lists(_byte_op, min_size=1, max_size=4),
)
def test_fuzz_mutated_checkpoints_load_or_fail_cleanly(load_worker, name, inner, ops):
    # Byte flips, truncations and splices of real checkpoints. For torch files `inner` mutates
    # the pickle inside the zip (kept a valid zip), so torch's unpickler sees the damage.
    suffix, blob = hostile.corpus()[name]
    member = hostile.zip_member(blob) if inner else None
    if member is not None:
        blob = hostile.replace_zip_member(blob, member[0], hostile.mutate(member[1], ops))
    else:
        blob = hostile.mutate(blob, ops)
    _assert_clean(load_worker.load(blob, suffix=suffix), (name, inner, ops))


_fragment = st.one_of(
    st.sampled_from(hostile.OPCODES),
    st.sampled_from(hostile.GLOBALS),
    st.sampled_from(hostile.STRINGS).map(hostile.binunicode),
    st.binary(max_size=24).map(hostile.short_binbytes),
    st.binary(max_size=24).map(hostile.short_binstring),
    st.integers(-3, 300).map(hostile.binint),
    st.floats().map(hostile.binfloat),
    st.integers(0, 7).map(lambda i: b"q" + bytes([i])),  # BINPUT
    st.integers(0, 7).map(lambda i: b"h" + bytes([i])),  # BINGET
    st.sampled_from(hostile.TEMPLATES),
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fragments=st.lists(_fragment, max_size=40),
    protocol=st.sampled_from([2, 4]),
    suffix=st.sampled_from([".pkl", ".pth"]),
)
def test_fuzz_random_opcode_streams_load_or_fail_cleanly(load_worker, fragments, protocol, suffix):
    blob = b"\x80" + bytes([protocol]) + b"".join(fragments) + b"."
    _assert_clean(load_worker.load(blob, suffix=suffix), blob)


@st.composite
def _numpy_value(draw):
    """An array or scalar as numpy pickles them, with every field possibly wrong."""
    spec = draw(st.sampled_from(["f4", "f8", "i8", "u1", "b1", "c8", "f2", "O8", "V8", "U2"]))
    spec = draw(st.just(spec) | st.sampled_from(["S3", "M8", "f16", "i3", "f4,O", "(2,)f4"]))
    dtype = hostile.dtype(
        spec,
        byteorder=draw(st.sampled_from(["<", ">", "|", "=", "?"])),
        flags=draw(st.sampled_from([0, 1, 16, 27, 63]) | st.integers(-(2**31), 2**31 - 1)),
        fields=draw(st.none() | st.none() | st.sampled_from([{"a": (np.dtype("O"), 0)}, {}])),
    )
    shape = tuple(draw(st.lists(st.integers(0, 4) | st.sampled_from([-1, 2**62]), max_size=3)))
    try:
        itemsize = np.dtype(spec).itemsize
    except TypeError:
        itemsize = 4
    exact = max(0, math.prod(shape)) * itemsize
    size = draw(st.sampled_from([exact, exact + 1]) | st.integers(0, 64))
    raw = draw(st.binary(min_size=min(size, 256), max_size=min(size, 256)))
    route = draw(st.sampled_from(["reconstruct", "frombuffer", "scalar"]))
    if route == "reconstruct":
        state = (1, shape, dtype, draw(st.booleans()), raw)
        return hostile.Reduce(hostile.RECONSTRUCT, (np.ndarray, (0,), b"b"), state)
    if route == "frombuffer":
        return hostile.Reduce(hostile.FROMBUFFER, (raw, dtype, shape, draw(st.sampled_from("CF"))))
    return hostile.Reduce(hostile.SCALAR, (dtype, raw[: draw(st.integers(0, 16))]))


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_numpy_value(), fmt=st.sampled_from(["p2", "p3", "p4", "p5", "pth"]))
def test_fuzz_numpy_values_load_or_fail_cleanly(load_worker, value, fmt):
    data = hostile.zoo_dict(value)
    if fmt == "pth":
        blob, suffix = hostile.as_pth(data), ".pth"
    else:
        blob, suffix = hostile.as_pkl(data, int(fmt[1])), ".pkl"
    _assert_clean(load_worker.load(blob, suffix=suffix), value.value)


def test_unhashable_byte_order_is_corrupt_not_a_type_error():
    value = hostile.Reduce(np.dtype, ("f4", False, True), (3, [], None, None, None, -1, -1, 0))
    with pytest.raises(CorruptCheckpointError, match=r"byte order \[\]"):
        loads_pickle(pickle.dumps({"d": value}, protocol=2))
