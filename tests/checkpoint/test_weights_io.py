"""safetensors reading (including hand-crafted hostile files), weights saving, version stamps."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import atrous
from atrous.checkpoint import (
    Checkpointer,
    CorruptCheckpointError,
    is_safetensors_file,
    load_checkpoint_file,
    read_safetensors,
    save_weights,
)

from .toy import ToySegmentor, d2_pickle, numpy_state


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def _craft(path: Path, header: object, data: bytes = b"", *, header_len: int | None = None,
           raw_header: bytes | None = None) -> Path:  # fmt: skip
    """Write a safetensors file by hand: 8-byte little-endian header length, JSON, bytes."""
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    length = len(body) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", length) + body + data)
    return path


def _f32(shape: list[int], start: int, end: int) -> dict:
    return {"dtype": "F32", "shape": shape, "data_offsets": [start, end]}


# ------------------------------------------------------------------------ saving and loading


def test_safetensors_round_trip_through_the_checkpointer(tmp_path):
    source = ToySegmentor()
    path = save_weights(tmp_path / "model.safetensors", source.state_dict())
    tensors, metadata = read_safetensors(path)
    assert tensors.keys() == source.state_dict().keys()
    assert metadata["atrous_version"] == atrous.__version__
    assert metadata["torch_version"] == torch.__version__

    target = ToySegmentor()
    report = Checkpointer(target).load(path, strict=True)
    _assert_same_weights(source, target)
    assert report.ok and not report.matching_heuristics
    assert report.metadata["atrous_version"] == atrous.__version__


def test_safetensors_is_detected_by_its_header_whatever_the_name(tmp_path):
    source = ToySegmentor()
    path = save_weights(tmp_path / "model.safetensors", source.state_dict())
    renamed = path.rename(tmp_path / "weights.bin")
    assert is_safetensors_file(renamed)
    pkl = d2_pickle(tmp_path / "model.pkl", numpy_state(source))
    torch.save(source.state_dict(), tmp_path / "model.pth")
    assert not is_safetensors_file(pkl) and not is_safetensors_file(tmp_path / "model.pth")

    target = ToySegmentor()
    assert Checkpointer(target).load(renamed).ok
    _assert_same_weights(source, target)


def test_shared_and_non_contiguous_tensors_are_saved_under_every_name(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {
        "tied_a": base,
        "tied_b": base,  # the same tensor twice (tied weights)
        "transposed": base.t(),  # non-contiguous view
        "row": base[1],  # a view into part of the storage
        "scalar": torch.tensor(7, dtype=torch.int64),
    }
    path = save_weights(tmp_path / "shared.safetensors", state)
    loaded = load_file(path)
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert loaded["tied_a"].data_ptr() != loaded["tied_b"].data_ptr()
    assert base.is_contiguous() and not state["transposed"].is_contiguous()  # inputs untouched


def test_pth_output_is_a_weights_only_model_dict_with_the_stamp(tmp_path):
    source = ToySegmentor()
    path = save_weights(tmp_path / "model.pth", source.state_dict(), metadata={"note": "x"})
    raw = torch.load(path, weights_only=True)
    assert raw.keys() == {"model", "metadata"}
    assert raw["metadata"]["atrous_version"] == atrous.__version__
    assert raw["metadata"]["note"] == "x"
    target = ToySegmentor()
    assert Checkpointer(target).load(path, strict=True).ok
    _assert_same_weights(source, target)


def test_save_weights_refuses_unknown_suffixes_and_non_strings(tmp_path):
    with pytest.raises(ValueError, match=r"\.safetensors or \.pth"):
        save_weights(tmp_path / "model.bin", ToySegmentor().state_dict())
    with pytest.raises(TypeError, match="strings"):
        save_weights(tmp_path / "m.safetensors", {"a": torch.zeros(1)}, metadata={"n": 1})
    with pytest.raises(TypeError, match="not a tensor"):
        save_weights(tmp_path / "m.safetensors", {"a": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_checkpointer_save_stamps_versions_and_old_files_still_load(tmp_path):
    model = ToySegmentor()
    path = Checkpointer(model, tmp_path).save("model_0000000", iteration=0)
    raw = torch.load(path, weights_only=True)
    assert raw["metadata"] == {
        "atrous_version": atrous.__version__,
        "torch_version": torch.__version__,
    }
    ckpt = Checkpointer(ToySegmentor(), tmp_path)
    report = ckpt.load(path)
    assert report.metadata["atrous_version"] == atrous.__version__
    assert report.extra == {"iteration": 0, "rng_state": report.extra["rng_state"]}

    del raw["metadata"]  # a checkpoint written before the stamp existed
    torch.save(raw, tmp_path / "old.pth")
    target = ToySegmentor()
    old = Checkpointer(target).load(tmp_path / "old.pth")
    assert old.ok and old.metadata == {}
    _assert_same_weights(model, target)
    with pytest.raises(ValueError, match="reserved"):
        Checkpointer(model, tmp_path).save("x", metadata={"a": "b"})


# ---------------------------------------------------------------------------- hostile files

_HOSTILE = {
    # name: (header, data, extra _craft arguments, what the error must say)
    "offsets-past-the-end": ({"w": _f32([4], 0, 16)}, b"\0" * 8, {}, "not fully covered"),
    "overlapping-tensors": (
        {"a": _f32([2], 0, 8), "b": _f32([2], 4, 12)}, b"\0" * 12, {}, "invalid offset"
    ),
    "gap-between-tensors": (
        {"a": _f32([1], 0, 4), "b": _f32([1], 8, 12)}, b"\0" * 12, {}, "invalid offset"
    ),
    "dtype-size-does-not-match-bytes": (
        {"w": _f32([3], 0, 8)}, b"\0" * 8, {}, "invalid shape, data type, or offset"
    ),
    "shape-overflows": (
        {"w": _f32([2**62, 8], 0, 8)}, b"\0" * 8, {}, "overflow"
    ),
    "header-length-larger-than-the-file": (
        {"w": _f32([1], 0, 4)}, b"\0" * 4, {"header_len": 10_000}, "invalid header length"
    ),
    "absurd-header-length": (None, b"", {"raw_header": b"{}", "header_len": 2**63}, "too large"),
    "invalid-json": (None, b"\0" * 4, {"raw_header": b'{"w": {"dtype": '}, "invalid JSON"),
    "header-is-a-list": ([1, 2, 3], b"", {}, "invalid type: sequence"),
    "unknown-dtype": (
        {"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, {}, "unknown"
    ),
    "negative-shape": (
        {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, {}, "usize"
    ),
    "metadata-not-strings": (
        {"__metadata__": {"n": 1}, "w": _f32([1], 0, 4)}, b"\0" * 4, {}, "expected a string"
    ),
    "trailing-bytes": ({"w": _f32([1], 0, 4)}, b"\0" * 9, {}, "not fully covered"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(_HOSTILE))
def test_hostile_safetensors_files_are_refused_naming_the_file(tmp_path, case):
    header, data, extra, reason = _HOSTILE[case]
    path = _craft(tmp_path / f"{case}.safetensors", header, data, **extra)
    with pytest.raises(CorruptCheckpointError) as info:
        load_checkpoint_file(path)
    message = str(info.value)
    assert str(path) in message and "not a valid safetensors file" in message
    assert reason in message
    model = ToySegmentor()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CorruptCheckpointError, match=reason.replace("(", r"\(")):
        Checkpointer(model).load(path)
    for key, value in model.state_dict().items():  # nothing was loaded
        assert torch.equal(value, before[key]), key


def test_hostile_file_under_another_name_still_gets_the_safetensors_check(tmp_path):
    # Starts like a safetensors file, so it is read as one, not handed to the unpickler.
    header, data, _, reason = _HOSTILE["overlapping-tensors"]
    path = _craft(tmp_path / "model.pth", header, data)
    assert is_safetensors_file(path)
    with pytest.raises(CorruptCheckpointError, match=reason):
        Checkpointer(ToySegmentor()).load(path)


def test_too_short_safetensors_file(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x05\x00")
    with pytest.raises(CorruptCheckpointError, match=f"{path}.*header too small"):
        load_checkpoint_file(path)


def test_a_valid_hand_written_file_loads(tmp_path):
    # The crafting helper itself writes readable files: the refusals above are about content.
    values = struct.pack("<2f", 1.5, -2.0)
    path = _craft(tmp_path / "ok.safetensors", {"w": _f32([2], 0, 8)}, values)
    tensors, metadata = read_safetensors(path)
    assert tensors["w"].tolist() == [1.5, -2.0] and metadata == {}
