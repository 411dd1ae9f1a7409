"""ASPP and its crop-dependent image pooling."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from atrous.layers import ASPP, ImagePooling


def test_global_pooling_without_kernel():
    x = torch.randn(2, 3, 7, 9)
    torch.testing.assert_close(ImagePooling(None)(x), x.mean(dim=(2, 3), keepdim=True))


def test_kernel_equal_to_feature_size_is_global_pooling():
    x = torch.randn(1, 4, 32, 64)
    torch.testing.assert_close(ImagePooling((32, 64))(x), F.adaptive_avg_pool2d(x, 1))


def test_larger_features_get_the_originals_sliding_average():
    # 1024x2048 test image, 512x1024 training crop, output stride 16: a (32, 64) window over 64x128.
    x = torch.randn(1, 4, 64, 128)
    pooled = ImagePooling((32, 64))(x)
    assert pooled.shape == (1, 4, 33, 65)
    torch.testing.assert_close(pooled, nn.AvgPool2d((32, 64), stride=1, padding=0)(x))


def test_feature_smaller_than_kernel_is_pooled_globally_per_dimension():
    x = torch.randn(1, 2, 20, 100)
    pooled = ImagePooling((32, 64))(x)
    assert pooled.shape == (1, 2, 1, 37)
    torch.testing.assert_close(pooled, nn.AvgPool2d((20, 64), stride=1)(x))


def test_aspp_forward_equals_its_definition():
    torch.manual_seed(0)
    aspp = ASPP(8, 4, [1, 2, 3], norm="BN", activation=nn.ReLU(), pool_kernel_size=(4, 4)).eval()
    for m in aspp.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 8, 10, 12)

    def conv_bn_relu(conv, inp):
        y = F.conv2d(inp, conv.weight, conv.bias, padding=conv.padding, dilation=conv.dilation)
        if conv.norm is not None:
            y = conv.norm(y)
        return F.relu(y)

    branches = [conv_bn_relu(aspp.convs[i], x) for i in range(4)]
    pooled = conv_bn_relu(aspp.convs[4][1], F.avg_pool2d(x, (4, 4), stride=1))
    branches.append(F.interpolate(pooled, size=(10, 12), mode="bilinear", align_corners=False))
    expected = conv_bn_relu(aspp.project, torch.cat(branches, 1))
    torch.testing.assert_close(aspp(x), expected)
    assert aspp.convs[4][1].bias is not None and aspp.convs[4][1].norm is None


def test_aspp_dropout_only_in_training():
    aspp = ASPP(4, 4, [1, 2, 3], norm="", activation=nn.ReLU(), dropout=0.5)
    x = torch.randn(1, 4, 6, 6)
    aspp.eval()
    torch.testing.assert_close(aspp(x), aspp(x))
    assert all(c.bias is not None for c in aspp.convs[:4])


def test_depthwise_separable_branches():
    aspp = ASPP(8, 4, [1, 2, 3], norm="BN", activation=nn.ReLU(), use_depthwise_separable_conv=True)
    names = dict(aspp.named_parameters())
    assert "convs.1.depthwise.weight" in names and "convs.1.pointwise.weight" in names
    assert names["convs.1.depthwise.weight"].shape == (8, 1, 3, 3)
    assert aspp.eval()(torch.randn(1, 8, 9, 9)).shape == (1, 4, 9, 9)
