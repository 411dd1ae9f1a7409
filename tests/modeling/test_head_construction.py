"""ASPP and both heads built directly from keyword arguments, without a config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from atrous.layers import ASPP, ShapeSpec
from atrous.modeling.heads import DeepLabV3Head, DeepLabV3PlusHead


def _aspp(in_channels: int, out_channels: int = 16) -> ASPP:
    return ASPP(in_channels, out_channels, [6, 12, 18], norm="BN", activation=nn.ReLU())


def test_aspp_has_five_branches_and_a_projection():
    aspp = _aspp(64, 16).eval()
    assert len(aspp.convs) == 5
    assert aspp(torch.randn(2, 64, 8, 16)).shape == (2, 16, 8, 16)


def test_v3_head_predicts_classes_at_the_stride_of_its_feature():
    # Heads are pure (features -> logits); the segmentor upsamples by `output_stride`.
    shapes = {"res5": ShapeSpec(channels=64, stride=16)}
    head = DeepLabV3Head(input_shape=shapes, aspp=_aspp(64), num_classes=5).eval()
    assert head.output_stride == 16
    assert head({"res5": torch.randn(1, 64, 4, 8)}).shape == (1, 5, 4, 8)


def test_v3plus_head_fuses_res2_with_aspp_and_predicts_at_the_res2_stride():
    shapes = {"res2": ShapeSpec(channels=32, stride=4), "res5": ShapeSpec(channels=64, stride=16)}
    head = DeepLabV3PlusHead(
        input_shape=shapes,
        aspp=_aspp(64),
        project_channels=[8],
        num_classes=5,
        decoder_channels=16,
    ).eval()
    assert head.decoder["res5"]["project_conv"] is not None
    # The fuse conv sees [res2 projection, ASPP output]: 8 + 16 channels.
    assert head.decoder["res2"]["fuse_conv"][0].in_channels == 8 + 16
    assert head.output_stride == 4
    features = {"res2": torch.randn(1, 32, 16, 32), "res5": torch.randn(1, 64, 4, 8)}
    assert head(features).shape == (1, 5, 16, 32)


def test_v3plus_head_wants_one_projection_per_finer_feature():
    shapes = {"res2": ShapeSpec(channels=32, stride=4), "res5": ShapeSpec(channels=64, stride=16)}
    with pytest.raises(ValueError, match="PROJECT_CHANNELS"):
        DeepLabV3PlusHead(input_shape=shapes, aspp=_aspp(64), project_channels=[], num_classes=5)
