"""ResNet pieces built directly from keyword arguments, without a config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from atrous.layers import ShapeSpec
from atrous.modeling.backbone import (
    BasicStem,
    DeepLabStem,
    ResNet,
    make_stage,
    stage_dilations,
)
from atrous.modeling.backbone.resnet import BottleneckBlock


def _conv_dilations(stage: nn.Sequential) -> list[int]:
    return [block.conv2.dilation[0] for block in stage]


def test_deeplab_stem_is_three_3x3_convs_then_a_max_pool_at_stride_4():
    stem = DeepLabStem(in_channels=3, out_channels=32, norm="BN")
    assert (stem.out_channels, stem.stride) == (32, 4)
    assert stem(torch.randn(2, 3, 64, 96)).shape == (2, 32, 16, 24)


def test_basic_stem_is_one_7x7_conv_then_a_max_pool_at_stride_4():
    stem = BasicStem(in_channels=3, out_channels=16, norm="BN")
    assert stem.conv1.kernel_size == (7, 7)
    assert stem(torch.randn(1, 3, 64, 96)).shape == (1, 16, 16, 24)


@pytest.mark.parametrize("stride_in_1x1", [False, True])
def test_bottleneck_strides_in_the_configured_conv_and_projects_its_shortcut(stride_in_1x1):
    block = BottleneckBlock(
        in_channels=16,
        out_channels=32,
        bottleneck_channels=8,
        stride=2,
        stride_in_1x1=stride_in_1x1,
    )
    assert block.shortcut is not None
    assert block.conv1.stride == ((2, 2) if stride_in_1x1 else (1, 1))
    assert block.conv2.stride == ((1, 1) if stride_in_1x1 else (2, 2))
    assert block(torch.randn(1, 16, 16, 16)).shape == (1, 32, 8, 8)


def test_bottleneck_without_channel_or_stride_change_has_an_identity_shortcut():
    block = BottleneckBlock(in_channels=32, out_channels=32, bottleneck_channels=8, dilation=2)
    assert block.shortcut is None
    assert block.conv2.padding == (2, 2)
    assert block(torch.randn(1, 32, 9, 9)).shape == (1, 32, 9, 9)


def test_make_stage_strides_and_widens_only_in_its_first_block():
    stage = make_stage(
        num_blocks=3,
        in_channels=16,
        out_channels=32,
        bottleneck_channels=8,
        first_stride=2,
        dilation_per_block=[1, 1, 1],
    )
    assert [block.conv2.stride[0] for block in stage] == [2, 1, 1]
    assert [block.shortcut is not None for block in stage] == [True, False, False]


def test_make_stage_wants_one_dilation_per_block():
    with pytest.raises(ValueError, match="RES5_MULTI_GRID"):
        make_stage(
            num_blocks=3,
            in_channels=16,
            out_channels=32,
            bottleneck_channels=8,
            first_stride=1,
            dilation_per_block=[2, 4],
        )


def test_stage_dilations_turn_output_stride_and_multi_grid_into_per_block_dilations():
    os16 = stage_dilations(depth=50, res5_dilation=2, res5_multi_grid=[1, 2, 4])
    assert os16 == {"res2": [1] * 3, "res3": [1] * 4, "res4": [1] * 6, "res5": [2, 4, 8]}
    os8 = stage_dilations(depth=101, res4_dilation=2, res5_dilation=4)
    assert os8["res4"] == [2] * 23 and os8["res5"] == [4, 4, 4]
    with pytest.raises(ValueError, match="RES5_DILATION 4"):
        stage_dilations(depth=50, res4_dilation=2, res5_dilation=2)


def test_torchvision_dilation_keeps_the_previous_dilation_in_a_stages_first_block():
    # torchvision's _make_layer(dilate=True): the first block is built before the stage's
    # dilation is raised.
    os8 = stage_dilations(depth=50, res4_dilation=2, res5_dilation=4, dilate_first_block=False)
    assert os8["res4"] == [1, 2, 2, 2, 2, 2] and os8["res5"] == [2, 4, 4]
    os16 = stage_dilations(depth=50, res5_dilation=2, dilate_first_block=False)
    assert os16["res4"] == [1] * 6 and os16["res5"] == [1, 2, 2]


def test_a_dilated_stage_does_not_stride_even_when_its_first_block_is_undilated(tiny_cfg):
    tiny_cfg.merge_from_list(
        ["MODEL.RESNETS.DILATE_FIRST_BLOCK", "False", "MODEL.RESNETS.RES4_DILATION", "2",
         "MODEL.RESNETS.RES5_DILATION", "4", "MODEL.RESNETS.RES5_MULTI_GRID", "[1, 1, 1]"]
    )  # fmt: skip
    from atrous.modeling import build_backbone

    backbone = build_backbone(tiny_cfg)
    assert backbone.output_shape()["res5"].stride == 8
    assert [b.conv2.dilation[0] for b in backbone.res4] == [1, 2, 2, 2, 2, 2]
    assert backbone.res4[0].conv2.stride == (1, 1) and backbone.res4[0].shortcut.stride == (1, 1)


def _small_dc5_resnet(out_features: list[str]) -> ResNet:
    dilations = stage_dilations(depth=50, res5_dilation=2, res5_multi_grid=[1, 2, 4])
    stages, strides = [], []
    in_channels, out_channels, bottleneck = 16, 32, 8
    for index, name in enumerate(("res2", "res3", "res4", "res5")):
        first_stride = 1 if index == 0 or dilations[name][0] > 1 else 2
        stage = make_stage(
            num_blocks=len(dilations[name]),
            in_channels=in_channels,
            out_channels=out_channels,
            bottleneck_channels=bottleneck,
            first_stride=first_stride,
            dilation_per_block=dilations[name],
        )
        stages.append((name, stage))
        strides.append(first_stride)
        in_channels, out_channels, bottleneck = out_channels, out_channels * 2, bottleneck * 2
    stem = DeepLabStem(in_channels=3, out_channels=16, norm="BN")
    return ResNet(stem=stem, stages=stages, out_features=out_features, stage_strides=strides)


def test_resnet_from_parts_declares_and_returns_its_feature_maps():
    backbone = _small_dc5_resnet(["stem", "res2", "res5"])
    assert backbone.output_shape() == {
        "stem": ShapeSpec(channels=16, stride=4),
        "res2": ShapeSpec(channels=32, stride=4),
        "res5": ShapeSpec(channels=256, stride=16),
    }
    assert _conv_dilations(backbone.res5) == [2, 4, 8]
    features = backbone(torch.randn(1, 3, 64, 128))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "stem": (1, 16, 16, 32),
        "res2": (1, 32, 16, 32),
        "res5": (1, 256, 4, 8),
    }


def test_resnet_rejects_an_output_it_does_not_have():
    with pytest.raises(ValueError, match="Unknown backbone output"):
        _small_dc5_resnet(["res6"])


def test_freeze_stops_gradients_up_to_the_given_stage():
    backbone = _small_dc5_resnet(["res5"]).freeze(2)
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert not any(p.requires_grad for p in backbone.res2.parameters())
    assert all(p.requires_grad for p in backbone.res3.parameters())
