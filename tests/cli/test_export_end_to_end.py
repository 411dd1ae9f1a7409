"""`atrous export --end-to-end`: the one-file graph from a config or a bundle, and its refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from atrous.checkpoint import Checkpointer
from atrous.cli.main import main
from atrous.deploy.export import TORCHSCRIPT_METADATA
from atrous.inference import Predictor
from atrous.modeling import build_model
from tests.helpers import SMALL_REFERENCE_OVERRIDES, V3PLUS_CONFIG, load_config


def test_end_to_end_bundle_export_is_refused(tmp_path, reference_bundle):
    with pytest.raises(SystemExit, match="--end-to-end is an option of the graph formats"):
        main(["export", "--format", "bundle", "--end-to-end", "--model", str(reference_bundle),
              "--output", str(tmp_path / "out")])  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # traces the model for ONNX (~20 s)
def test_end_to_end_onnx_from_a_bundle_labels_with_its_classes(
    tmp_path, reference_bundle, reference_dir, capsys
):
    output = tmp_path / "model.onnx"
    code = main(["export", "--format", "onnx", "--end-to-end", "--model", str(reference_bundle),
                 "--output", str(output)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "end to end): image uint8 (N, H, W, 3) RGB -> labels int64" in out
    assert "note:" not in out  # the bundle predicts at the input size: nothing to resize
    bundle_json = json.loads((reference_bundle / "bundle.json").read_text())
    props = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    assert props["atrous_graph"] == "end_to_end"
    assert json.loads(props["atrous_classes"]) == bundle_json["classes"]
    assert json.loads(props["atrous_colors"]) == bundle_json["colors"]

    image = np.load(reference_dir / "input_128x256.npy")
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    labels, confidence = session.run(None, {"image": image[None]})
    expected = Predictor(reference_bundle)(image, return_probabilities=True)
    # Exact parity, near-ties aside, is tests/deploy/test_export_end_to_end.py's subject.
    assert (labels[0] == expected.labels).mean() >= 0.995
    assert np.abs(confidence[0] - expected.probabilities.max(0)).max() <= 1e-3


def test_end_to_end_torchscript_from_a_config_with_sliding_pooling(tmp_path, reference_dir, capsys):
    overrides = [
        *SMALL_REFERENCE_OVERRIDES,
        "MODEL.WEIGHTS", str(reference_dir / "small_v3plus.pkl"),
        "INPUT.CROP.ENABLED", "True", "INPUT.CROP.SIZE", "(64, 128)",
    ]  # fmt: skip
    output = tmp_path / "model.pt"
    code = main(["export", "--format", "torchscript", "--end-to-end", "--config-file",
                 str(V3PLUS_CONFIG), "--output", str(output), *overrides])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "H >= 64, W >= 128" in out
    # The config resizes at test time (MIN_SIZE_TEST 1024) and the graph does not: it says so.
    assert "INPUT.MIN_SIZE_TEST=1024" in out

    extra_files = {TORCHSCRIPT_METADATA: ""}
    scripted = torch.jit.load(str(output), _extra_files=extra_files)
    metadata = json.loads(extra_files[TORCHSCRIPT_METADATA])
    assert json.loads(metadata["atrous_classes"])[:2] == ["road", "sidewalk"]  # Cityscapes
    cfg = load_config(V3PLUS_CONFIG, overrides)
    model = build_model(cfg).eval()
    assert Checkpointer(model).load(cfg.MODEL.WEIGHTS).matched
    image = torch.from_numpy(np.load(reference_dir / "input_128x256.npy"))
    with torch.no_grad():
        labels, confidence = scripted(image[None])
        logits = model([{"image": image.permute(2, 0, 1)}])[0]["sem_seg"]
    probs = logits.softmax(0)
    assert (labels[0] == logits.argmax(0)).float().mean() >= 0.995
    assert (confidence[0] - probs.max(0).values).abs().max() <= 1e-3
