"""Fine-tuning starts: ImageNet and segmentation files of torchvision into other class counts,
and the configs/Custom pair."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from atrous.checkpoint import Checkpointer, CheckpointError
from atrous.checkpoint.model_zoo import MODEL_ZOO
from atrous.cli.common import load_weights
from atrous.config import get_cfg
from atrous.modeling import build_model
from tests.helpers import REPO_ROOT, TORCHVISION_REFERENCE_DIR

from ..modeling.test_torchvision_parity import narrow_torchvision_config

SEGMENTATION_FILE = TORCHVISION_REFERENCE_DIR / "deeplabv3_mobilenet_v3.safetensors"
CUSTOM = REPO_ROOT / "configs" / "Custom"


def _narrow_mobilenet_deeplab(num_classes: int):
    cfg = narrow_torchvision_config("deeplabv3_mobilenet_v3_large")
    cfg.merge_from_list(["MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes)])
    return build_model(cfg)


def test_another_class_count_reinitialises_the_predictor_with_one_log_line(caplog):
    model = _narrow_mobilenet_deeplab(5)
    before = model.sem_seg_head.predictor.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="atrous.checkpoint.checkpointer"):
        report = Checkpointer(model).load(str(SEGMENTATION_FILE))
    assert report.reinitialised == ["sem_seg_head.predictor.bias", "sem_seg_head.predictor.weight"]
    assert report.shape_mismatched == [] and report.missing == [] and report.unexpected == []
    assert report.class_counts() == (21, 5) and not report.ok
    torch.testing.assert_close(model.sem_seg_head.predictor.weight, before)  # untouched
    source = load_file(SEGMENTATION_FILE)
    torch.testing.assert_close(model.sem_seg_head.conv.weight, source["classifier.1.weight"])
    messages = [r for r in caplog.records if r.name == "atrous.checkpoint.checkpointer"]
    load_lines = [r for r in messages if "Loaded" in r.getMessage()]
    assert len(load_lines) == 1 and load_lines[0].levelno == logging.INFO
    line = load_lines[0].getMessage()
    assert "\n" not in line
    assert "predictor is re-initialised for 5 classes (the checkpoint has 21)" in line


def test_inference_refuses_a_predictor_for_other_classes():
    with pytest.raises(
        CheckpointError,
        match=r"does not fit this model: it predicts 21 classes, this model 5.*NUM_CLASSES 21",
    ):
        load_weights(_narrow_mobilenet_deeplab(5), str(SEGMENTATION_FILE), allow_partial=False)


def _imagenet_mobilenet_file(tmp_path):
    """A file in torchvision's ImageNet ``mobilenet_v3_large`` layout (``features.N``, the
    classifier), at the reference's width 0.5."""
    source = load_file(SEGMENTATION_FILE)
    state = {
        re.sub(r"^backbone\.", "features.", k): v
        for k, v in source.items()
        if k.startswith("backbone.")
    }
    state["classifier.0.weight"] = torch.zeros(1280, 480)
    state["classifier.0.bias"] = torch.zeros(1280)
    state["classifier.3.weight"] = torch.zeros(1000, 1280)
    state["classifier.3.bias"] = torch.zeros(1000)
    path = tmp_path / "mobilenet_v3_large-00000000.safetensors"
    save_file(state, path)
    return path


def _custom_cfg(name: str, overrides: list[str]):
    cfg = get_cfg()
    cfg.merge_from_file(str(CUSTOM / name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *overrides])
    return cfg


def test_custom_cpu_config_starts_from_imagenet_mobilenet_weights(tmp_path):
    cfg = _custom_cfg(
        "deeplab_v3_plus_mobilenet_v3_large_cpu.yaml",
        ["MODEL.MOBILENET.WIDTH_MULT", "0.5", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"],
    )
    assert cfg.MODEL.WEIGHTS == "torchvision/mobilenet_v3_large" and cfg.MODEL.WEIGHTS in MODEL_ZOO
    model = build_model(cfg)
    report = Checkpointer(model).load(str(_imagenet_mobilenet_file(tmp_path)))
    assert report.unexpected == [
        "classifier.0.bias", "classifier.0.weight", "classifier.3.bias", "classifier.3.weight"
    ]  # fmt: skip
    assert report.shape_mismatched == []
    # the whole backbone comes from the file; the DeepLabV3+ head starts from its initialisation
    assert all(k.startswith("sem_seg_head.") for k in report.missing)
    assert not any(k.startswith("sem_seg_head.") for k in report.matched)
    assert model.sem_seg_head.decoder["res2"]["project_conv"].in_channels == 16  # stride 4


@pytest.mark.parametrize(
    "name, weights",
    [
        ("deeplab_v3_plus_mobilenet_v3_large_cpu.yaml", "torchvision/mobilenet_v3_large"),
        ("deeplab_v3_plus_R_50_gpu.yaml", "torchvision/resnet50"),
    ],
)
def test_custom_configs_build_and_name_imagenet_weights(name, weights):
    cfg = _custom_cfg(name, ["MODEL.WEIGHTS", ""])
    assert _custom_cfg(name, []).MODEL.WEIGHTS == weights and weights in MODEL_ZOO
    model = build_model(cfg)
    assert model.sem_seg_head.output_stride == 4
    # a torchvision-layout ImageNet file has a place for every backbone weight (see
    # tests/checkpoint/test_torchvision_published.py for the shapes)
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.PIXEL_STD[0] > 50
