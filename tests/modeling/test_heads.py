"""Heads and the crop-dependent ASPP pooling against a functional re-statement of the original."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from atrous.checkpoint import Checkpointer
from atrous.layers import ImagePooling
from atrous.modeling import build_model
from tests.helpers import SMALL_REFERENCE_OVERRIDES, V3_CONFIG, load_config


def _conv(conv, x):
    """detectron2 Conv2d: conv, then norm, then ReLU (all convs of the heads use ReLU)."""
    y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if conv.norm is not None:
        y = F.batch_norm(
            y, conv.norm.running_mean, conv.norm.running_var, conv.norm.weight, conv.norm.bias,
            False, 0.0, conv.norm.eps,
        )  # fmt: skip
    return F.relu(y)


def _aspp(aspp, x, pool_kernel):
    size = x.shape[-2:]
    branches = [_conv(aspp.convs[i], x) for i in range(4)]
    pooled = (
        x.mean((2, 3), keepdim=True) if pool_kernel is None else F.avg_pool2d(x, pool_kernel, 1)
    )
    pooled = _conv(aspp.convs[4][1], pooled)
    branches.append(F.interpolate(pooled, size=size, mode="bilinear", align_corners=False))
    return _conv(aspp.project, torch.cat(branches, 1))


def _v3plus(head, feats, pool_kernel):
    y = _aspp(head.decoder["res5"]["project_conv"], feats["res5"], pool_kernel)
    proj = _conv(head.decoder["res2"]["project_conv"], feats["res2"])
    y = F.interpolate(y, size=proj.shape[-2:], mode="bilinear", align_corners=False)
    fuse = head.decoder["res2"]["fuse_conv"]
    y = _conv(fuse[1], _conv(fuse[0], torch.cat([proj, y], 1)))
    return F.conv2d(y, head.predictor.weight, head.predictor.bias)


@pytest.mark.parametrize("size", [(64, 128), (128, 256), (96, 160)])
def test_v3plus_with_crop_pooling_matches_functional_original(tiny_cfg, reference_dir, size):
    # Crop 256x512 at stride 16 gives a (16, 32) window: global at 256x512, sliding above it.
    tiny_cfg.merge_from_list(["INPUT.CROP.ENABLED", "True", "INPUT.CROP.SIZE", "(64, 128)"])
    model = build_model(tiny_cfg).eval()
    Checkpointer(model).load(str(reference_dir / "small_v3plus.pkl"))
    pool = next(m for m in model.modules() if isinstance(m, ImagePooling))
    assert pool.kernel_size == (4, 8)
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8)
    with torch.no_grad():
        ours = model([{"image": image}])[0]["sem_seg"]
        x, _ = model.preprocess([image])
        feats = model.backbone(x)
        expected = _v3plus(model.sem_seg_head, feats, (4, 8))
        expected = F.interpolate(expected, scale_factor=4, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_v3_head_matches_functional_original():
    cfg = load_config(V3_CONFIG, SMALL_REFERENCE_OVERRIDES)
    # The shipped 512x1024 crop: a (32, 64) pooling window at output stride 16.
    cfg.merge_from_list(["INPUT.CROP.ENABLED", "True"])
    model = build_model(cfg).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        model.sem_seg_head.predictor.weight.normal_(0, 0.1)
    # 1024x2048 is the size where the (32, 64) sliding pool matters; 512x1024 is global.
    image = torch.randint(0, 256, (3, 1024, 2048), dtype=torch.uint8)
    with torch.no_grad():
        ours = model([{"image": image}])[0]["sem_seg"]
        x, _ = model.preprocess([image])
        res5 = model.backbone(x)["res5"]
        assert res5.shape[-2:] == (64, 128)
        head = model.sem_seg_head
        y = _aspp(head.aspp, res5, (32, 64))
        y = F.conv2d(y, head.predictor.weight, head.predictor.bias)
        expected = F.interpolate(y, scale_factor=16, mode="bilinear", align_corners=False)[0]
    assert ours.shape == (19, 1024, 2048)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_pooling_kernel_follows_crop_and_stride(tiny_cfg):
    from atrous.modeling import aspp_pool_kernel_size

    tiny_cfg.merge_from_list(["INPUT.CROP.ENABLED", "True", "INPUT.CROP.SIZE", "(512, 1024)"])
    assert aspp_pool_kernel_size(tiny_cfg, 16) == (32, 64)
    assert aspp_pool_kernel_size(tiny_cfg, 8) == (64, 128)
    tiny_cfg.merge_from_list(["INPUT.CROP.SIZE", "(500, 1000)"])
    with pytest.raises(ValueError, match="divisible by the output stride 16"):
        aspp_pool_kernel_size(tiny_cfg, 16)
    tiny_cfg.merge_from_list(["INPUT.CROP.TYPE", "relative_range"])
    with pytest.raises(ValueError, match="absolute"):
        aspp_pool_kernel_size(tiny_cfg, 16)
