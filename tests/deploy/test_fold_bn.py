"""BatchNorm folding: exact in float64, within 1e-4 in float32, for every foldable norm type."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from atrous.deploy import fold_batchnorm
from atrous.deploy.fold_bn import foldable_norm
from atrous.layers import Conv2d, FrozenBatchNorm2d, NaiveSyncBatchNorm
from atrous.modeling import build_model


def _randomise_norms(model: nn.Module, seed: int) -> None:
    """Give every BN non-trivial statistics and affine parameters, as a trained model has."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.25)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)


def _logits(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model([{"image": image}])[0]["sem_seg"]


@pytest.mark.parametrize("norm", ["BN", "SyncBN", "FrozenBN"])
def test_folded_model_matches_unfolded_in_float32(tiny_cfg, reference_image, norm):
    tiny_cfg.merge_from_list(["MODEL.RESNETS.NORM", norm, "MODEL.SEM_SEG_HEAD.NORM", norm])
    model = build_model(tiny_cfg).eval()
    _randomise_norms(model, seed=1)
    before = _logits(model, reference_image)
    folded = fold_batchnorm(copy.deepcopy(model))
    after = _logits(folded, reference_image)

    assert before.std() > 0.05  # the comparison below is not against a flat output
    assert torch.allclose(after, before, rtol=0, atol=1e-4), (after - before).abs().max()
    remaining = [
        m
        for m in folded.modules()
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))
    ]
    assert remaining == []
    # The original is untouched and still has its norms.
    assert any(isinstance(m, Conv2d) and m.norm is not None for m in model.modules())


def test_folding_is_exact_in_float64_on_the_reference_weights(reference_model, reference_image):
    # The reference weights are random with far-from-identity BN statistics: the network
    # amplifies any rounding ~2.5x per stage, so in float32 the unfolded model itself is ~2e-4
    # from the exact result. In float64 folding must be exact, and in float32 the folded model
    # must be as close to the exact result as the unfolded one.
    model64 = copy.deepcopy(reference_model).double()
    exact = _logits(model64, reference_image)
    folded64 = _logits(fold_batchnorm(copy.deepcopy(model64)), reference_image)
    assert torch.allclose(folded64, exact, rtol=0, atol=1e-9)

    unfolded32 = _logits(reference_model, reference_image).double()
    folded32 = _logits(fold_batchnorm(copy.deepcopy(reference_model)), reference_image).double()
    error_unfolded = (unfolded32 - exact).abs().max()
    error_folded = (folded32 - exact).abs().max()
    assert error_folded <= 3 * error_unfolded + 1e-5, (error_folded, error_unfolded)


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("bias", [False, True])
def test_single_conv_fold(groups, bias):
    generator = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(8, generator=generator))
        bn.running_var.copy_(torch.rand(8, generator=generator) + 0.1)
        bn.weight.copy_(torch.randn(8, generator=generator))
        bn.bias.copy_(torch.randn(8, generator=generator))
    conv = Conv2d(
        8, 8, 3, padding=2, dilation=2, groups=groups, bias=bias, norm=bn, activation=torch.relu
    )
    conv.eval()
    x = torch.randn(2, 8, 9, 11, generator=generator)
    expected = conv(x)
    fold_batchnorm(conv)
    assert conv.norm is None and conv.bias is not None
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-5)


def test_channels_last_weights_stay_channels_last():
    conv = Conv2d(4, 6, 3, bias=False, norm=nn.BatchNorm2d(6)).eval()
    conv.to(memory_format=torch.channels_last)
    fold_batchnorm(conv)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_group_norm_and_batch_stat_norms_are_left_alone():
    assert not foldable_norm(nn.GroupNorm(2, 4))
    assert not foldable_norm(nn.BatchNorm2d(4, track_running_stats=False))
    assert not foldable_norm(None)
    assert foldable_norm(NaiveSyncBatchNorm(4)) and foldable_norm(FrozenBatchNorm2d(4))
    conv = Conv2d(4, 4, 1, norm=nn.GroupNorm(2, 4))
    fold_batchnorm(conv)
    assert isinstance(conv.norm, nn.GroupNorm)
