"""The restricted unpickler reads model-zoo files and refuses anything that could run code."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from atrous.checkpoint import (
    CorruptCheckpointError,
    UnsafePickleError,
    load_pickle,
    loads_pickle,
)


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
