"""Weights conversion: into a model (atrous names) and as stored (names and reading hints kept)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from atrous.checkpoint import Checkpointer, CheckpointError, read_safetensors
from atrous.checkpoint.convert import convert_as_stored, convert_into_model

from .toy import ToySegmentor, d2_pickle, numpy_state


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def _backbone_only_pickle(tmp_path, source):
    state = numpy_state(source)
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return d2_pickle(tmp_path / "R-toy.pkl", backbone), backbone


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_into_model_writes_our_names_that_load_strictly(tmp_path, suffix):
    source = ToySegmentor()
    pkl, _ = _backbone_only_pickle(tmp_path, source)
    model = ToySegmentor()
    result = convert_into_model(pkl, tmp_path / f"out{suffix}", model)
    assert result.report is not None and result.report.matching_heuristics
    assert result.num_tensors == len(model.state_dict())

    target = ToySegmentor()
    report = Checkpointer(target).load(result.output, strict=True)
    assert report.ok and not report.matching_heuristics
    assert report.metadata["converted_from"] == "R-toy.pkl"
    _assert_same_weights(model, target)
    torch.testing.assert_close(target.backbone.stem.conv1.weight, source.backbone.stem.conv1.weight)


def test_into_model_strict_writes_nothing_when_the_file_does_not_fit(tmp_path):
    pkl, _ = _backbone_only_pickle(tmp_path, ToySegmentor())  # no head weights
    with pytest.raises(CheckpointError, match="strict"):
        convert_into_model(pkl, tmp_path / "out.safetensors", ToySegmentor(), strict=True)
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_as_stored_keeps_names_and_the_suffix_matching_hint(tmp_path, suffix):
    source = ToySegmentor()
    pkl, backbone = _backbone_only_pickle(tmp_path, source)
    result = convert_as_stored(pkl, tmp_path / f"R-toy{suffix}")
    assert result.report is None and result.num_tensors == len(backbone)
    if suffix == ".safetensors":
        tensors, metadata = read_safetensors(result.output)
        assert tensors.keys() == backbone.keys()  # names as stored: no "backbone." prefix
        assert metadata["matching_heuristics"] == "True" and metadata["__author__"] == "test"
    else:
        raw = torch.load(result.output, weights_only=True)
        assert raw["model"].keys() == backbone.keys() and raw["matching_heuristics"] is True

    # The converted file behaves like the original: the backbone loads by suffix matching.
    from_pkl, from_converted = ToySegmentor(), ToySegmentor()
    expected = Checkpointer(from_pkl).load(pkl)
    report = Checkpointer(from_converted).load(result.output)
    assert report.matching_heuristics and report.matched == expected.matched
    assert all(k.startswith("backbone.") for k in report.matched)
    for key in report.matched:
        assert torch.equal(from_converted.state_dict()[key], from_pkl.state_dict()[key]), key


def test_as_stored_keeps_caffe2_renaming(tmp_path):
    source = ToySegmentor()
    blobs = {
        "conv1_w": source.backbone.stem.conv1.weight.detach().numpy(),
        "res2_0_branch2a_w": source.backbone.res2[0].conv1.weight.detach().numpy(),
    }
    pkl = tmp_path / "R-50.pkl"
    pkl.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    result = convert_as_stored(pkl, tmp_path / "R-50.safetensors")
    target = ToySegmentor()
    report = Checkpointer(target).load(result.output)
    assert report.matched == ["backbone.res2.0.conv1.weight", "backbone.stem.conv1.weight"]
    torch.testing.assert_close(target.backbone.stem.conv1.weight, source.backbone.stem.conv1.weight)


def test_as_stored_drops_training_state_and_non_arrays(tmp_path):
    source = ToySegmentor()
    ckpt_dir = tmp_path / "run"
    opt = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    path = Checkpointer(source, ckpt_dir, optimizer=opt).save("model_final", iteration=9)
    result = convert_as_stored(path, tmp_path / "model_final.safetensors")
    tensors, _ = read_safetensors(result.output)
    assert tensors.keys() == source.state_dict().keys()

    mixed = tmp_path / "mixed.pkl"
    weights = {"a": np.ones(2, np.float32), "note": "text", "n": 3}
    mixed.write_bytes(pickle.dumps({"model": weights, "__author__": "x"}, protocol=2))
    result = convert_as_stored(mixed, tmp_path / "mixed.safetensors")
    assert result.skipped == ["note", "n"] and result.num_tensors == 1

    empty = tmp_path / "empty.pkl"
    empty.write_bytes(pickle.dumps({"model": {"note": "x"}, "__author__": "x"}, protocol=2))
    with pytest.raises(CheckpointError, match="no arrays"):
        convert_as_stored(empty, tmp_path / "empty.safetensors")


def test_unknown_output_suffix_is_refused_before_reading(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        convert_as_stored(tmp_path / "missing.pkl", tmp_path / "out.onnx")
