"""The pieces every command shares: config loading, the size parser, model + weights."""

from __future__ import annotations

import argparse

import pytest
import torch

from atrous.checkpoint.errors import CheckpointError
from atrous.cli.common import build_model_and_load, load_config, parse_size
from atrous.cli.main import main
from tests.helpers import SMALL_REFERENCE_OVERRIDES, V3PLUS_CONFIG


@pytest.mark.parametrize("text", ["512x1024", " 512 X 1024 ", "512,1024"])
def test_parse_size_reads_height_then_width(text):
    assert parse_size(text) == (512, 1024)


@pytest.mark.parametrize("text", ["big", "512by1024", "0x5", "5x0", "-5x3", "1x2x3", ""])
def test_parse_size_refuses_anything_but_two_positive_integers(text):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        parse_size(text)
    assert str(info.value) == (
        f"--size must look like 256x512 (HxW, both at least 1), got {text!r}."
    )
    with pytest.raises(argparse.ArgumentTypeError, match=r"^--sample-size must look like"):
        parse_size(text, flag="--sample-size")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["benchmark", "--size", "0x5"], "--size"),
        (["quickstart", "--size", "0x5"], "--size"),
        (["prepare", "synthetic", "--size", "0x5"], "--size"),
        (["export", "--format", "onnx", "--output", "m.onnx", "--sample-size", "0x5"],
         "--sample-size"),
    ],
)  # fmt: skip
def test_every_size_flag_is_a_usage_error(argv, flag, capsys):
    # A zero height used to pass `prepare` and `quickstart` and fail later, or not at all.
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert f"argument {flag}: {flag} must look like 256x512 (HxW" in capsys.readouterr().err


def test_load_config_merges_the_file_then_the_overrides():
    cfg = load_config(str(V3PLUS_CONFIG), ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"])
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 3
    assert cfg.MODEL.RESNETS.DEPTH == 101  # from the file (R103 is a depth-101 ResNet)
    assert not cfg.is_frozen()


def test_load_config_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


def test_build_model_and_load_refuses_weights_that_leave_the_head_random(tmp_path):
    cfg = load_config(str(V3PLUS_CONFIG), SMALL_REFERENCE_OVERRIDES)
    source = build_model_and_load(cfg, allow_partial=False)  # empty MODEL.WEIGHTS: random
    weights = tmp_path / "model_19.pth"
    torch.save({"model": source.state_dict()}, weights)
    cfg.merge_from_list(["MODEL.WEIGHTS", str(weights)])
    same = build_model_and_load(cfg, allow_partial=False)
    for key, value in source.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key

    cfg.merge_from_list(["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"])
    with pytest.raises(CheckpointError, match=r"does not fit this model(.|\n)*--allow-partial"):
        build_model_and_load(cfg, allow_partial=False)
    partial = build_model_and_load(cfg, allow_partial=True)
    key = next(k for k in source.state_dict() if k.startswith("backbone."))
    assert torch.equal(partial.state_dict()[key], source.state_dict()[key])


def test_model_flag_names_an_exported_graph_by_suffix_or_folder(tmp_path, reference_bundle):
    from atrous.cli.common import config_or_bundle, exported_model_file, load_model_source
    from atrous.config import ConfigError

    folder = tmp_path / "quantized"
    folder.mkdir()
    (folder / "config.yaml").write_text(f"_BASE_: {V3PLUS_CONFIG}\n")
    graph = folder / "model_int8.xml"
    graph.write_text("")
    assert exported_model_file(str(folder)) == graph
    assert exported_model_file(str(graph)) == graph
    assert exported_model_file(str(reference_bundle)) is None  # a bundle stays a bundle
    assert exported_model_file(None) is None
    args = argparse.Namespace(config_file=None, model=str(graph), opts=["MODEL.WEIGHTS", ""])
    source = load_model_source(args)
    assert source.exported == graph and source.bundle is None
    assert source.cfg.MODEL.WEIGHTS == "" and source.cfg.MODEL.RESNETS.DEPTH == 101
    # Commands that need the PyTorch model say so instead of failing on the file.
    with pytest.raises(ConfigError, match="is an exported graph; this needs the PyTorch model"):
        config_or_bundle(args)
    (folder / "model_int8.onnx").write_text("")
    with pytest.raises(ConfigError, match="holds several exported graphs"):
        exported_model_file(str(folder))
    (folder / "model_int8.onnx").unlink()
    graph.unlink()
    with pytest.raises(ConfigError, match="neither a model bundle"):
        exported_model_file(str(folder))
