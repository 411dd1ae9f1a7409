"""`atrous export` end to end: the written files load and match the PyTorch model."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from atrous.checkpoint import Checkpointer
from atrous.cli.main import main
from atrous.modeling import build_model
from tests.helpers import SMALL_REFERENCE_OVERRIDES, V3PLUS_CONFIG, load_config

CROP_OVERRIDES = ["INPUT.CROP.ENABLED", "True", "INPUT.CROP.SIZE", "(64, 128)"]


@pytest.fixture
def weights_overrides(reference_dir):
    return [*SMALL_REFERENCE_OVERRIDES, "MODEL.WEIGHTS", str(reference_dir / "small_v3plus.pkl")]


def _pytorch_model(overrides):
    cfg = load_config(V3PLUS_CONFIG, overrides)
    model = build_model(cfg)
    assert Checkpointer(model).load(cfg.MODEL.WEIGHTS).matched
    return model.eval()


def _natural_images(reference_dir, sizes):
    picture = np.load(reference_dir / "input_128x256.npy")
    image = torch.from_numpy(picture).permute(2, 0, 1).float()[None]
    return [
        torch.nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=False)
        .round()
        .clamp(0, 255)
        for size in sizes
    ]


def test_torchscript_export_with_sliding_pooling(
    tmp_path, weights_overrides, reference_dir, capsys
):
    overrides = [*weights_overrides, *CROP_OVERRIDES]
    output = tmp_path / "out" / "model.pt"
    code = main(
        ["export", "--format", "torchscript", "--config-file", str(V3PLUS_CONFIG),
         "--output", str(output), *overrides]
    )  # fmt: skip
    assert code == 0 and output.is_file()
    assert "H >= 64, W >= 128" in capsys.readouterr().out
    exported = torch.jit.load(str(output))
    model = _pytorch_model(overrides)
    for images in _natural_images(reference_dir, [(128, 256), (150, 300)]):
        with torch.no_grad():
            expected = model([{"image": images[0]}])[0]["sem_seg"]
            got = exported(images)[0]
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1e-3


def test_onnx_export_runs_in_onnxruntime(tmp_path, weights_overrides, reference_dir):
    output = tmp_path / "model.onnx"
    code = main(
        ["export", "--format", "onnx", "--config-file", str(V3PLUS_CONFIG),
         "--output", str(output), *weights_overrides]
    )  # fmt: skip
    assert code == 0
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    model = _pytorch_model(weights_overrides)
    for images in _natural_images(reference_dir, [(128, 256), (90, 170)]):
        got = session.run(None, {"images": images.numpy()})[0][0]
        with torch.no_grad():
            expected = model([{"image": images[0]}])[0]["sem_seg"].numpy()
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-3
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary files left


def test_missing_config_file_is_named(tmp_path, capsys):
    assert main(["export", "--format", "onnx", "--config-file", str(tmp_path / "nope.yaml"),
                 "--output", str(tmp_path / "m.onnx")]) == 2  # fmt: skip
    assert re.search(r"nope\.yaml", capsys.readouterr().err)


def test_unloadable_weights_are_named(tmp_path, capsys):
    bad = tmp_path / "weights.pkl"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export", "--format", "torchscript", "--config-file", str(V3PLUS_CONFIG),
                 "--output", str(tmp_path / "m.pt"), *SMALL_REFERENCE_OVERRIDES,
                 "MODEL.WEIGHTS", str(bad)]) == 1  # fmt: skip
    assert re.search(r"weights\.pkl", capsys.readouterr().err)
    assert not (tmp_path / "m.pt").exists()


def test_export_bundle_then_export_from_it(tmp_path, weights_overrides, reference_dir, capsys):
    bundle = tmp_path / "my_model"
    code = main(["export", "--format", "bundle", "--config-file", str(V3PLUS_CONFIG),
                 "--output", str(bundle), *weights_overrides])  # fmt: skip
    assert code == 0 and f"atrous predict --model {bundle}" in capsys.readouterr().out
    assert sorted(p.name for p in bundle.iterdir()) == [
        "README.md", "bundle.json", "config.yaml", "model.safetensors"
    ]  # fmt: skip

    output = tmp_path / "model.pt"
    assert main(["export", "--format", "torchscript", "--model", str(bundle),
                 "--output", str(output)]) == 0  # fmt: skip
    exported = torch.jit.load(str(output))
    model = _pytorch_model(weights_overrides)
    (images,) = _natural_images(reference_dir, [(128, 256)])
    with torch.no_grad():
        expected = model([{"image": images[0]}])[0]["sem_seg"]
        got = exported(images)[0]
    assert (got - expected).abs().max() <= 1e-3

    again = tmp_path / "copy"
    assert main(["export", "--format", "bundle", "--model", str(bundle),
                 "--output", str(again)]) == 0  # fmt: skip
    first, second = (load_file(b / "model.safetensors") for b in (bundle, again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_export_needs_exactly_one_model_source(tmp_path, reference_bundle, capsys):
    assert main(["export", "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 2
    assert "either --config-file" in capsys.readouterr().err
    code = main(["export", "--format", "onnx", "--config-file", str(V3PLUS_CONFIG), "--model",
                 str(reference_bundle), "--output", str(tmp_path / "m.onnx")])  # fmt: skip
    assert code == 2
    assert "either --config-file" in capsys.readouterr().err
    assert main(["export", "--format", "onnx", "--model", str(tmp_path),
                 "--output", str(tmp_path / "m.onnx")]) == 1  # fmt: skip
    assert "bundle.json is missing" in capsys.readouterr().err


def test_weights_that_leave_the_head_random_are_refused(tmp_path, weights_overrides, capsys):
    # A model exported with its head left random writes a file that predicts nothing useful.
    output = tmp_path / "bundle"
    args = ["export", "--format", "bundle", "--config-file", str(V3PLUS_CONFIG),
            "--output", str(output), *weights_overrides,
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"]  # fmt: skip
    assert main(args) == 1
    assert re.search(r"small_v3plus\.pkl.*does not fit this model", capsys.readouterr().err)
    assert not output.exists()
    assert main([*args[:3], "--allow-partial", *args[3:]]) == 0
    assert (output / "model.safetensors").is_file()


@pytest.mark.slow
def test_openvino_export_runs_in_openvino(tmp_path, weights_overrides, reference_dir):
    from atrous.deploy.openvino import openvino_core  # without telemetry, as atrous imports it

    output = tmp_path / "ir" / "model.xml"
    code = main(
        ["export", "--format", "openvino", "--config-file", str(V3PLUS_CONFIG),
         "--output", str(output), *weights_overrides, *CROP_OVERRIDES]
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in output.parent.iterdir()) == ["model.bin", "model.xml"]
    compiled = openvino_core().compile_model(
        str(output), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    model = _pytorch_model([*weights_overrides, *CROP_OVERRIDES])
    for images in _natural_images(reference_dir, [(128, 256), (150, 300)]):
        got = compiled(images.numpy())[0][0]
        with torch.no_grad():
            expected = model([{"image": images[0]}])[0]["sem_seg"].numpy()
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_openvino_export_needs_an_xml_output(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["export", "--format", "openvino", "--config-file", str(V3PLUS_CONFIG),
              "--output", str(tmp_path / "model.onnx")])  # fmt: skip
    assert stop.value.code == 2
    assert "--format openvino writes a .xml file" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
