"""Training mode: losses, gradients for every parameter, every norm, freezing, initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from atrous.layers import FrozenBatchNorm2d
from atrous.modeling import build_model
from atrous.modeling.losses import DeepLabCE, build_sem_seg_loss
from tests.helpers import V3_CONFIG, load_config


def _batch(n=2, size=(64, 96), num_classes=19):
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(n):
        label = torch.randint(0, num_classes, size, generator=g)
        label[:4] = 255
        image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g)
        batch.append({"image": image, "sem_seg": label})
    return batch


def _gn_friendly(cfg):
    """Widths divisible by GroupNorm's 32 groups."""
    cfg.merge_from_list([
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "64", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "32", "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", "[32]",
    ])  # fmt: skip


@pytest.mark.parametrize("norm", ["BN", "SyncBN", "GN", ""])
def test_every_parameter_gets_a_finite_gradient(tiny_cfg, norm):
    if norm == "GN":
        _gn_friendly(tiny_cfg)
    tiny_cfg.merge_from_list(["MODEL.RESNETS.NORM", norm, "MODEL.SEM_SEG_HEAD.NORM", norm])
    model = build_model(tiny_cfg).train()
    losses = model(_batch())
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
    losses["loss_sem_seg"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
    model.eval()
    with torch.no_grad():
        out = model([{"image": b["image"]} for b in _batch()])
    assert all(torch.isfinite(o["sem_seg"]).all() for o in out)


def test_frozen_bn_and_freeze_at(tiny_cfg):
    tiny_cfg.merge_from_list(["MODEL.RESNETS.NORM", "FrozenBN", "MODEL.BACKBONE.FREEZE_AT", "2"])
    model = build_model(tiny_cfg).train()
    assert isinstance(model.backbone.res3[0].conv1.norm, FrozenBatchNorm2d)
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(("backbone.stem.", "backbone.res2."))), name
    model(_batch())["loss_sem_seg"].backward()
    assert model.backbone.res3[0].conv1.weight.grad is not None


def test_freeze_at_converts_trainable_bn_of_frozen_stages(tiny_cfg):
    tiny_cfg.merge_from_list(["MODEL.BACKBONE.FREEZE_AT", "3"])
    model = build_model(tiny_cfg)
    assert isinstance(model.backbone.stem.conv1.norm, FrozenBatchNorm2d)
    assert isinstance(model.backbone.res3[0].conv2.norm, FrozenBatchNorm2d)
    assert isinstance(model.backbone.res4[0].conv2.norm, nn.BatchNorm2d)


def test_v3_model_trains_and_upsamples_by_16(tiny_cfg):
    cfg = load_config(V3_CONFIG, ["INPUT.CROP.ENABLED", "False"])
    for key in ("DEPTH", "STEM_OUT_CHANNELS", "RES2_OUT_CHANNELS", "WIDTH_PER_GROUP"):
        cfg.MODEL.RESNETS[key] = tiny_cfg.MODEL.RESNETS[key]
    cfg.merge_from_list(["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN"])
    cfg.merge_from_list(["MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "32"])
    model = build_model(cfg)
    model(_batch())["loss_sem_seg"].backward()
    model.eval()
    with torch.no_grad():
        assert model([{"image": _batch()[0]["image"]}])[0]["sem_seg"].shape == (19, 64, 96)


def test_hard_pixel_mining_is_mean_of_top_20_percent_over_the_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, 10, generator=g)
    labels = torch.randint(0, 5, (2, 8, 10), generator=g)
    labels[0, :3] = 255
    per_pixel = F.cross_entropy(logits, labels, ignore_index=255, reduction="none").flatten()
    k = int(0.2 * per_pixel.numel())
    expected = per_pixel.sort(descending=True).values[:k].mean()
    torch.testing.assert_close(DeepLabCE(ignore_label=255)(logits, labels), expected)
    # Ignored pixels count as zeros in the pool: with everything ignored the loss is zero.
    assert DeepLabCE()(logits, torch.full_like(labels, 255)) == 0
    full = DeepLabCE(top_k_percent_pixels=1.0)(logits, labels)
    torch.testing.assert_close(full, per_pixel.mean())


def test_cross_entropy_loss_and_unknown_type():
    logits, labels = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    labels[0, 0] = 255
    loss = build_sem_seg_loss("cross_entropy", ignore_label=255)(logits, labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, ignore_index=255))
    with pytest.raises(ValueError, match="hard_pixel_mining"):
        build_sem_seg_loss("focal", ignore_label=255)


def test_training_labels_are_padded_with_ignore(tiny_cfg):
    tiny_cfg.merge_from_list(["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "cross_entropy"])
    model = build_model(tiny_cfg).train()
    big, small = _batch(1, (64, 96))[0], _batch(1, (48, 64))[0]
    seen = {}
    model.loss.register_forward_hook(lambda _m, args, _out: seen.update(t=args[1]))
    model([big, small])
    targets = seen["t"]
    assert targets.shape == (2, 64, 96)
    assert (targets[1, 48:] == 255).all() and (targets[1, :, 64:] == 255).all()
    torch.testing.assert_close(targets[1, :48, :64], small["sem_seg"])


def test_initialisation_follows_the_original(tiny_cfg):
    model = build_model(tiny_cfg)
    head = model.sem_seg_head
    assert head.predictor.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert torch.all(head.predictor.bias == 0)
    # Backbone: MSRA fill (fan_out, ReLU gain).
    w = model.backbone.res4[0].conv2.weight
    fan_out = w.shape[0] * w.shape[2] * w.shape[3]
    assert w.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)
    # Heads: Caffe2 Xavier fill = kaiming_uniform(a=1): bound sqrt(3 / fan_in).
    w = head.decoder["res5"]["project_conv"].project.weight
    bound = (3.0 / w[0].numel()) ** 0.5
    assert w.abs().max().item() <= bound and w.abs().max().item() > 0.9 * bound


def test_bad_model_configs_are_clear_errors(tiny_cfg):
    for key, value, message in [
        ("MODEL.SEM_SEG_HEAD.NAME", "UNetHead", "DeepLabV3PlusHead"),
        ("MODEL.BACKBONE.NAME", "build_vit", "build_resnet_deeplab_backbone"),
        ("MODEL.RESNETS.DEPTH", "34", "depth must be one of"),
        ("MODEL.RESNETS.STEM_TYPE", "fancy", "STEM_TYPE"),
        ("MODEL.SEM_SEG_HEAD.COMMON_STRIDE", "8", "COMMON_STRIDE 4"),
        ("MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res3', 'res5']", "not produced by the backbone"),
        ("MODEL.RESNETS.RES5_MULTI_GRID", "[1, 2]", "one entry per res5 block"),
    ]:
        cfg = tiny_cfg.clone()
        cfg.merge_from_list([key, value])
        with pytest.raises(ValueError, match=message):
            build_model(cfg)


def test_output_stride_8(tiny_cfg):
    tiny_cfg.merge_from_list(
        ["MODEL.RESNETS.RES4_DILATION", "2", "MODEL.RESNETS.RES5_DILATION", "4"]
    )
    model = build_model(tiny_cfg)
    shapes = model.backbone.output_shape()
    assert shapes["res5"].stride == 8
    assert [b.conv2.dilation[0] for b in model.backbone.res5] == [4, 8, 16]
    assert model.backbone.res4[0].conv2.stride == (1, 1)
