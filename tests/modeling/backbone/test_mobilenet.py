"""MobileNetV3-Large: torchvision's channel counts and strides, width multiplier, heads on top."""

from __future__ import annotations

import pytest
import torch

from atrous.config import get_cfg
from atrous.layers import FrozenBatchNorm2d
from atrous.modeling import build_model
from atrous.modeling.backbone import MobileNetV3
from atrous.modeling.backbone.mobilenet import make_divisible

ALL = ["stem", "res2", "res3", "res4", "res5"]


def test_make_divisible_is_torchvisions_rounding():
    assert [make_divisible(c * 0.5) for c in (16, 24, 40, 72, 112, 160, 960)] == [
        8, 16, 24, 40, 56, 80, 480,
    ]  # fmt: skip
    assert make_divisible(672 // 4) == 168 and make_divisible(960 // 4) == 240


@pytest.mark.parametrize(
    "width, dilated, channels, strides",
    [
        (1.0, True, [16, 24, 40, 112, 960], [2, 4, 8, 16, 16]),
        (1.0, False, [16, 24, 40, 112, 960], [2, 4, 8, 16, 32]),
        (0.5, True, [8, 16, 24, 56, 480], [2, 4, 8, 16, 16]),
    ],
)
def test_outputs_have_the_declared_shapes(width, dilated, channels, strides):
    backbone = MobileNetV3(width_mult=width, dilated=dilated, out_features=ALL).eval()
    shapes = backbone.output_shape()
    assert [shapes[n].channels for n in ALL] == channels
    assert [shapes[n].stride for n in ALL] == strides
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 96))
    for name in ALL:
        s = shapes[name].stride
        assert out[name].shape == (1, shapes[name].channels, 64 // s, 96 // s), name


def test_published_layer_count_and_dilated_last_stage():
    backbone = MobileNetV3()
    assert len(backbone.features) == 17
    depthwise = [b.block[-3 if len(b.block) == 4 else -2] for b in backbone.features[13:16]]
    assert [(c.dilation[0], c.stride[0]) for c in depthwise] == [(2, 1)] * 3
    bn = backbone.features[0].norm
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)


def test_freeze_at_freezes_the_stem_and_early_stages():
    backbone = MobileNetV3(out_features=ALL).freeze(2)  # stem and res2: features 0..3
    for index, layer in enumerate(backbone.features):
        frozen = index <= 3
        assert all(not p.requires_grad for p in layer.parameters()) == frozen or not list(
            layer.parameters()
        )
        has_frozen_bn = any(isinstance(m, FrozenBatchNorm2d) for m in layer.modules())
        assert has_frozen_bn == frozen, index


def _mobilenet_cfg(head: str):
    cfg = get_cfg()
    cfg.merge_from_list(
        ["MODEL.BACKBONE.NAME", "build_mobilenet_v3_large_backbone", "MODEL.DEVICE", "cpu",
         "MODEL.BACKBONE.FREEZE_AT", "0", "MODEL.MOBILENET.WIDTH_MULT", "0.5",
         "MODEL.SEM_SEG_HEAD.NAME", head, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5",
         "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "16", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16",
         "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "cross_entropy"]
    )  # fmt: skip
    if head == "DeepLabV3PlusHead":
        cfg.merge_from_list(
            ["MODEL.MOBILENET.OUT_FEATURES", "['res2', 'res5']",
             "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res5']",
             "MODEL.SEM_SEG_HEAD.COMMON_STRIDE", "4"]
        )  # fmt: skip
    else:
        cfg.merge_from_list(
            ["MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res5']", "MODEL.SEM_SEG_HEAD.COMMON_STRIDE", "16"]
        )  # fmt: skip
    return cfg


@pytest.mark.parametrize("head", ["DeepLabV3Head", "TorchvisionDeepLabHead", "DeepLabV3PlusHead"])
def test_every_head_trains_on_mobilenet(head):
    model = build_model(_mobilenet_cfg(head)).train()
    batch = [
        {"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
         "sem_seg": torch.randint(0, 5, (64, 64))}
        for _ in range(2)
    ]  # fmt: skip
    loss = model(batch)["loss_sem_seg"]
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "height": 50, "width": 70}])
    assert out[0]["sem_seg"].shape == (5, 50, 70)
