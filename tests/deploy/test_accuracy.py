"""The fast path's agreement report on a dataset (the figures quoted in docs/benchmarks.md)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from atrous.cli.main import main
from atrous.deploy.accuracy import compare_fast_path, compare_predictions


@pytest.fixture
def synthetic_cfg(tiny_cfg, reference_dir, synthetic_cityscapes_root, monkeypatch):
    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent))
    tiny_cfg.merge_from_list(
        ["MODEL.WEIGHTS", str(reference_dir / "small_v3plus.pkl"), "DATALOADER.NUM_WORKERS", "0",
         "INPUT.MIN_SIZE_TEST", "0"]
    )  # fmt: skip
    return tiny_cfg


def test_float32_fast_path_on_the_synthetic_val_split(synthetic_cfg):
    # In float32 the fast path (channels_last + folded BN) only reorders sums.
    synthetic_cfg.merge_from_list(["TEST.FAST.DTYPE", "float32"])
    result = compare_fast_path(synthetic_cfg, "synthetic_sem_seg_val")
    assert result["images"] == 4
    assert result["pixel_agreement"] >= 0.999
    assert result["min_image_agreement"] >= 0.99
    assert result["max_abs_logit_diff"] < 1e-3
    assert math.isfinite(result["miou_fp32"]) and result["miou_diff"] <= 0.1
    assert result["fast_path"]["fold_bn"] and result["fast_path"]["channels_last"]


def test_a_different_model_is_detected(reference_model, reference_image):
    other = torch.nn.Module()
    other.forward = lambda batch: [
        {"sem_seg": torch.roll(o["sem_seg"], 7, dims=-1)} for o in reference_model(batch)
    ]
    batches = [[{"image": reference_image}]]
    assert compare_predictions(reference_model, reference_model, batches)["pixel_agreement"] == 1
    assert compare_predictions(reference_model, other, batches)["pixel_agreement"] < 0.9
    with pytest.raises(ValueError, match="No images"):
        compare_predictions(reference_model, other, [])


def test_command_line(synthetic_cfg, tmp_path, capsys):
    from tests.helpers import SMALL_REFERENCE_OVERRIDES, V3PLUS_CONFIG

    weights = synthetic_cfg.MODEL.WEIGHTS
    report = tmp_path / "accuracy.json"
    code = main(
        ["benchmark", "--mode", "accuracy", "--config-file", str(V3PLUS_CONFIG),
         "--dataset", "synthetic_sem_seg_val", "--json", str(report), *SMALL_REFERENCE_OVERRIDES,
         "MODEL.WEIGHTS", weights, "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TEST", "0"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    printed = json.loads(out[: out.rindex("}") + 1])
    # The same figures as the library call on the same config: the weights were loaded and the
    # default (bfloat16) fast path was compared on every image of the split.
    expected = compare_fast_path(synthetic_cfg, "synthetic_sem_seg_val")
    assert printed.keys() == expected.keys()
    assert printed["images"] == expected["images"] == 4
    assert printed["dataset"] == "synthetic_sem_seg_val"
    assert printed["fast_path"] == expected["fast_path"] and printed["fast_path"]["fold_bn"]
    for key in ("pixel_agreement", "min_image_agreement", "max_abs_logit_diff", "miou_fp32"):
        assert printed[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    assert 0.5 < printed["pixel_agreement"] <= 1 and math.isfinite(printed["miou_fp32"])
    assert json.loads(report.read_text()) == {"mode": "accuracy", **printed}
    assert f"wrote {report}" in out
