"""Fold inference-mode batch normalisation into the convolution that precedes it.

In eval mode a BatchNorm is a per-channel affine map ``y = (x - mean) / sqrt(var + eps) * gamma +
beta``. Applied right after a convolution it can be absorbed into the convolution's weight and
bias, which removes one full read and write of every activation map (for the R103 backbone, about
a hundred BN layers) and lets the convolution kernel write its output once.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import Conv2d, FrozenBatchNorm2d

__all__ = ["fold_batchnorm", "foldable_norm"]


def foldable_norm(norm: nn.Module | None) -> bool:
    """Whether `norm` is an affine map at inference time that `fold_batchnorm` can absorb.

    True for FrozenBatchNorm2d and for every BatchNorm (BatchNorm2d, NaiveSyncBatchNorm,
    nn.SyncBatchNorm) that tracks running statistics; GroupNorm and BatchNorm without running
    statistics normalise with statistics of the input and cannot be folded.
    """
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return (
        isinstance(norm, nn.modules.batchnorm._BatchNorm)
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.running_var is not None
    )


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, norm: nn.Module) -> None:
    # Computed in float64: the scale can be large where the running variance is tiny, and the
    # folded weights must reproduce the unfolded output to 1e-4 even then.
    mean = norm.running_mean.double()
    var = norm.running_var.double()
    if isinstance(norm, FrozenBatchNorm2d) or norm.affine:
        gamma, beta = norm.weight.double(), norm.bias.double()
    else:
        gamma, beta = torch.ones_like(mean), torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + norm.eps)
    weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    bias = (bias - mean) * scale + beta

    dtype, device = conv.weight.dtype, conv.weight.device
    # Keep the memory format (channels_last weights stay channels_last).
    new_weight = torch.empty_like(conv.weight)
    new_weight.copy_(weight.to(dtype))
    conv.weight = nn.Parameter(new_weight, requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(bias.to(dtype=dtype, device=device), requires_grad=False)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Absorb every foldable norm of an `atrous.layers.Conv2d` into its weight and bias, in place.

    Each such convolution gets a bias (``(b - mean) * scale + beta`` with
    ``scale = gamma / sqrt(var + eps)``), its weight is scaled per output channel, and its
    ``norm`` becomes None, so the module computes in one convolution what it computed before in
    eval mode. Convolutions with GroupNorm or no norm are left alone.

    The folded model is for inference only: training would need batch statistics, which are gone.
    Call it on a copy if the original model is still needed (`optimize_for_inference` does).

    Args:
        model: any module; its `atrous.layers.Conv2d` sub-modules are folded.

    Returns:
        `model` itself, modified.
    """
    for module in model.modules():
        if isinstance(module, Conv2d) and foldable_norm(module.norm):
            _fold_into(module, module.norm)
            module.norm = None
    return model
