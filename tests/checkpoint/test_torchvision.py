"""torchvision/timm key names -> atrous names: detection and renaming as a pure function."""

from __future__ import annotations

import pytest

from atrous.checkpoint.torchvision import (
    convert_torchvision_state_dict,
    detect_torchvision_layout,
)

RESNET = ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.bn3.bias",
          "layer4.2.downsample.0.weight", "layer4.2.downsample.1.num_batches_tracked",
          "fc.weight", "fc.bias"]  # fmt: skip


@pytest.mark.parametrize(
    "keys, layout",
    [
        (RESNET, "resnet"),
        (["backbone." + k for k in RESNET[:4]] + ["classifier.4.weight"], "deeplabv3_resnet"),
        (["features.0.0.weight", "features.1.block.0.0.weight", "classifier.3.weight"],
         "mobilenet_v3"),
        (["backbone.0.0.weight", "backbone.1.block.0.0.weight"], "deeplabv3_mobilenet_v3"),
        (["backbone.stem.conv1.weight", "backbone.res2.0.conv1.weight"], None),
        (["backbone.features.0.weight", "backbone.features.1.block.0.weight"], None),
        (["stem.conv1.weight", "res2.0.conv1.weight"], None),
    ],
)  # fmt: skip
def test_layout_detection(keys, layout):
    assert detect_torchvision_layout(keys) == layout


def test_resnet_names_into_a_segmentor_and_into_a_bare_backbone():
    state = {k: i for i, k in enumerate(RESNET)}
    seg = convert_torchvision_state_dict(state, layout="resnet", model_keys=["backbone.x"])
    assert list(seg) == [
        "backbone.stem.conv1.weight",
        "backbone.stem.conv1.norm.running_mean",
        "backbone.res2.0.conv1.weight",
        "backbone.res2.0.conv3.norm.bias",
        "backbone.res5.2.shortcut.weight",
        "backbone.res5.2.shortcut.norm.num_batches_tracked",
        "fc.weight",  # no counterpart: reported unused
        "fc.bias",
    ]
    assert list(seg.values()) == list(range(len(RESNET)))
    bare = convert_torchvision_state_dict(state, layout="resnet", model_keys=["stem.conv1.weight"])
    assert "res5.2.shortcut.weight" in bare and "stem.conv1.norm.running_mean" in bare


def test_deeplab_head_and_mobilenet_names():
    keys = [
        "backbone.0.0.weight", "backbone.0.1.running_var", "backbone.4.block.2.fc1.bias",
        "backbone.4.block.3.1.weight", "backbone.16.0.weight",
        "classifier.0.convs.0.0.weight", "classifier.0.convs.3.1.bias",
        "classifier.0.convs.4.1.weight", "classifier.0.convs.4.2.running_mean",
        "classifier.0.project.0.weight", "classifier.0.project.1.weight",
        "classifier.1.weight", "classifier.2.bias", "classifier.4.weight", "classifier.4.bias",
        "aux_classifier.0.weight",
    ]  # fmt: skip
    out = convert_torchvision_state_dict(
        dict.fromkeys(keys, 0), layout="deeplabv3_mobilenet_v3", model_keys=["backbone.x"]
    )
    assert list(out) == [
        "backbone.features.0.weight", "backbone.features.0.norm.running_var",
        "backbone.features.4.block.2.fc1.bias", "backbone.features.4.block.3.norm.weight",
        "backbone.features.16.weight",
        "sem_seg_head.aspp.convs.0.weight", "sem_seg_head.aspp.convs.3.norm.bias",
        "sem_seg_head.aspp.convs.4.1.weight", "sem_seg_head.aspp.convs.4.1.norm.running_mean",
        "sem_seg_head.aspp.project.weight", "sem_seg_head.aspp.project.norm.weight",
        "sem_seg_head.conv.weight", "sem_seg_head.conv.norm.bias",
        "sem_seg_head.predictor.weight", "sem_seg_head.predictor.bias",
        "aux_classifier.0.weight",
    ]  # fmt: skip


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="Unknown torchvision layout"):
        convert_torchvision_state_dict({}, layout="vgg", model_keys=[])
