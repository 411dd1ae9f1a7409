"""Loading detectron2 files into the real models built from the seed's configs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from atrous.checkpoint import Checkpointer, CheckpointError, load_pickle
from atrous.modeling import build_model
from tests.helpers import SMALL_REFERENCE_OVERRIDES, V3_CONFIG, load_config

from .toy import d2_pickle


@pytest.fixture(scope="module")
def reference_image(reference_dir) -> torch.Tensor:
    image = np.load(reference_dir / "input_128x256.npy")  # (H, W, 3) uint8 RGB
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def _logits(model, image) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model([{"image": image, "height": 128, "width": 256}])[0]["sem_seg"]


def _assert_reference_logits(model, image, reference_dir):
    logits = _logits(model, image).numpy()
    expected = np.load(reference_dir / "small_v3plus_nocrop__128x256__logits.npy")
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
    # Identical argmax wherever the reference's top two classes are further apart than the
    # tolerance (exact-tie pixels are the modeling parity tests' business, not loading's).
    top2 = np.sort(expected, axis=0)[-2:]
    decided = top2[1] - top2[0] > 1e-4
    reference_argmax = np.load(reference_dir / "small_v3plus_nocrop__128x256__argmax.npy")
    np.testing.assert_array_equal(logits.argmax(0)[decided], reference_argmax[decided])
    assert decided.mean() > 0.99


def test_reference_pkl_loads_completely_and_reproduces_logits(
    tiny_cfg, reference_dir, reference_image
):
    model = build_model(tiny_cfg)
    report = Checkpointer(model).load(reference_dir / "small_v3plus.pkl", strict=True)
    assert report.ok and report.matching_heuristics
    assert report.missing == [] and report.unexpected == [] and report.shape_mismatched == []
    assert sorted(report.matched) == sorted(model.state_dict())
    assert report.ignored == []  # BN model, file with counters: nothing to excuse
    _assert_reference_logits(model, reference_image, reference_dir)


def test_reference_pkl_into_frozen_bn_backbone(tiny_cfg, reference_dir, reference_image):
    tiny_cfg.merge_from_list(["MODEL.RESNETS.NORM", "FrozenBN"])
    model = build_model(tiny_cfg)
    report = Checkpointer(model).load(reference_dir / "small_v3plus.pkl")
    # FrozenBN keeps no counter; the file's backbone counters are expected leftovers.
    assert report.ok, report.summary()
    assert report.ignored and all(k.endswith("num_batches_tracked") for k in report.ignored)
    assert all(k.startswith("backbone.") for k in report.ignored)
    _assert_reference_logits(model, reference_image, reference_dir)


def test_backbone_only_file_loads_into_full_model(tiny_cfg, reference_dir, tmp_path):
    reference = load_pickle(reference_dir / "small_v3plus.pkl")["model"]
    prefix = "backbone."
    backbone = {k[len(prefix) :]: v for k, v in reference.items() if k.startswith(prefix)}
    assert "stem.conv1.weight" in backbone and "res5.2.conv3.norm.running_var" in backbone
    path = d2_pickle(tmp_path / "R-50-small.pkl", backbone)

    model = build_model(tiny_cfg)
    report = Checkpointer(model).load(path)
    state = model.state_dict()
    assert report.matched == sorted(k for k in state if k.startswith(prefix))
    assert report.unexpected == []
    head = sorted(k for k in state if not k.startswith(prefix))
    assert report.missing == [k for k in head if not k.endswith("num_batches_tracked")]
    for key, value in backbone.items():
        np.testing.assert_array_equal(state[prefix + key].numpy(), value)


def test_v3_checkpoint_into_v3plus_model_reports_without_crash(tiny_cfg, tmp_path):
    v3 = build_model(load_config(V3_CONFIG, SMALL_REFERENCE_OVERRIDES))
    path = tmp_path / "v3.pkl"
    weights = {k: v.numpy() for k, v in v3.state_dict().items()}
    path.write_bytes(pickle.dumps({"model": weights, "__author__": "t", "matching_heuristics": 1}))

    model = build_model(tiny_cfg)
    report = Checkpointer(model).load(path)
    assert report.missing and all(k.startswith("sem_seg_head.") for k in report.missing)
    assert report.unexpected and all(k.startswith("sem_seg_head.") for k in report.unexpected)
    assert {k for k in report.matched if k.startswith("backbone.")} == {
        k for k in model.state_dict() if k.startswith("backbone.")
    }
    summary = report.summary()
    assert f"{len(report.missing)} missing, {len(report.unexpected)} unexpected" in summary

    with pytest.raises(CheckpointError, match="strict loading was requested"):
        Checkpointer(build_model(tiny_cfg)).load(path, strict=True)


def test_own_checkpoint_round_trip(tiny_cfg, reference_dir, reference_image, tmp_path):
    source = build_model(tiny_cfg)
    Checkpointer(source).load(reference_dir / "small_v3plus.pkl")
    Checkpointer(source, tmp_path).save("model_final", iteration=89999)

    target = build_model(tiny_cfg)
    report = Checkpointer(target).load(tmp_path / "model_final.pth", strict=True)
    assert report.ok and not report.matching_heuristics
    assert report.extra["iteration"] == 89999
    _assert_reference_logits(target, reference_image, reference_dir)
