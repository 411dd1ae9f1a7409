"""`atrous convert` on the detectron2 reference file: the converted weights give the same logits."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from atrous.checkpoint import Checkpointer, read_safetensors
from atrous.cli.main import main
from atrous.modeling import build_model
from tests.helpers import SMALL_REFERENCE_OVERRIDES, V3PLUS_CONFIG, load_config


@pytest.fixture(scope="module")
def reference_input(reference_dir) -> list[dict]:
    image = torch.from_numpy(np.load(reference_dir / "input_128x256.npy")).permute(2, 0, 1)
    return [{"image": image.contiguous(), "height": 128, "width": 256}]


def _logits(weights, batched_inputs) -> np.ndarray:
    model = build_model(load_config(V3PLUS_CONFIG, SMALL_REFERENCE_OVERRIDES))
    report = Checkpointer(model).load(weights, strict=True)
    assert report.ok, report.summary()
    model.eval()
    with torch.no_grad():
        return model(batched_inputs)[0]["sem_seg"].numpy()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_convert_reference_pkl_reproduces_its_logits(
    tmp_path, reference_dir, reference_input, suffix, caplog
):
    pkl = reference_dir / "small_v3plus.pkl"
    output = tmp_path / f"small_v3plus{suffix}"
    with caplog.at_level(logging.INFO, logger="atrous.checkpoint"):
        code = main(["convert", "--config-file", str(V3PLUS_CONFIG), str(pkl), str(output),
                     *SMALL_REFERENCE_OVERRIDES])  # fmt: skip
    assert code == 0 and output.is_file()
    # the report training logs, for the detectron2 file read by suffix matching
    assert "Loaded 382 of 382 model entries" in caplog.text and "(matched by suffix)" in caplog.text

    converted = _logits(output, reference_input)
    expected = np.load(reference_dir / "small_v3plus_nocrop__128x256__logits.npy")
    np.testing.assert_allclose(converted, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(converted, _logits(pkl, reference_input))
    if suffix == ".safetensors":
        tensors, metadata = read_safetensors(output)
        assert len(tensors) == 382 and metadata["converted_from"] == "small_v3plus.pkl"
        assert all(t.is_contiguous() for t in tensors.values())


def test_convert_without_config_is_a_pure_format_change(tmp_path, reference_dir, capsys):
    pkl = reference_dir / "small_v3plus.pkl"
    first = tmp_path / "as_stored.safetensors"
    assert main(["convert", str(pkl), str(first)]) == 0
    assert "382 tensors, names as stored" in capsys.readouterr().out
    second = tmp_path / "as_stored.pth"
    assert main(["convert", str(first), str(second)]) == 0
    raw = torch.load(second, weights_only=True)
    tensors, _ = read_safetensors(first)
    assert raw["model"].keys() == tensors.keys()
    assert all(torch.equal(raw["model"][k], tensors[k]) for k in tensors)


def test_convert_strict_refuses_a_model_it_does_not_fit(tmp_path, reference_dir, capsys):
    output = tmp_path / "out.safetensors"
    code = main(["convert", "--strict", "--config-file", str(V3PLUS_CONFIG),
                 str(reference_dir / "small_v3plus.pkl"), str(output),
                 *SMALL_REFERENCE_OVERRIDES, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7"])  # fmt: skip
    assert code == 1 and not output.exists()
    err = capsys.readouterr().err
    assert "strict loading was requested" in err and "sem_seg_head.predictor.weight" in err


def test_convert_command_line_errors(tmp_path, reference_dir, capsys):
    pkl = str(reference_dir / "small_v3plus.pkl")
    assert main(["convert", pkl, str(tmp_path / "out.onnx")]) == 2
    assert "suffix" in capsys.readouterr().err
    assert main(["convert", pkl, str(tmp_path / "o.safetensors"), "MODEL.DEVICE", "cpu"]) == 2
    assert "need --config-file" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nope.pkl"), str(tmp_path / "o.safetensors")]) == 1
    assert "nope.pkl does not exist" in capsys.readouterr().err
    code = main(["convert", "--config-file", str(tmp_path / "no.yaml"), pkl,
                 str(tmp_path / "o.safetensors")])  # fmt: skip
    assert code == 2 and "no.yaml" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
