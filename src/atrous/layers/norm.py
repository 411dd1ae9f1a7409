"""Normalisation layers selected by name, as in detectron2's `get_norm`.

"SyncBN" builds `NaiveSyncBatchNorm`: a `BatchNorm2d` (same state-dict layout) that averages batch
statistics over all ranks with an all-reduce when a process group exists. Unlike
`nn.SyncBatchNorm` it works on CPU with gloo; on CUDA the trainer swaps it for
`nn.SyncBatchNorm` (NCCL kernels) with `convert_sync_batchnorm` before wrapping the model in DDP.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

__all__ = ["FrozenBatchNorm2d", "NaiveSyncBatchNorm", "convert_sync_batchnorm", "get_norm"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers.

    Computes ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``. Used for frozen
    backbone stages (`FREEZE_AT`) and the "FrozenBN" norm.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        if x.requires_grad:
            # F.batch_norm would also build gradients for the frozen weight and bias.
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(
                x.dtype
            )
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints written from a trainable BatchNorm carry a step counter we have no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm in `module` (recursively) by a FrozenBatchNorm2d.

        Returns the converted module (a new object when `module` itself is a BatchNorm).
        """
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen = cls(module.num_features, eps=module.eps)
            if module.affine:
                frozen.weight.data.copy_(module.weight.detach())
                frozen.bias.data.copy_(module.bias.detach())
            frozen.running_mean.data.copy_(module.running_mean)
            frozen.running_var.data.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            converted = cls.convert_frozen_batchnorm(child)
            if converted is not child:
                module.add_module(name, converted)
        return module


class _AllGather(torch.autograd.Function):
    """Stack a tensor from every rank: (...) -> (world_size, ...), differentiable.

    Every rank uses the whole stack, so the gradient of this rank's slice is the sum of all
    ranks' gradients for it.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.stack(gathered)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[dist.get_rank()]


class NaiveSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with batch statistics synchronised across ranks by one all-gather.

    Each rank computes the per-channel mean and variance of its batch; one all-gather shares
    them (gradients flow back through it) and every rank combines them into the global
    statistics. Assumes the same per-rank batch size, as the trainer guarantees.
    Without a process group of more than one rank, or in eval mode, it is plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        if not self.training or not (
            dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        ):
            return super().forward(x)

        world_size = dist.get_world_size()
        channels = x.shape[1]
        compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        xf = x.to(compute_dtype)
        # Per-rank mean and variance, combined exactly like nn.SyncBatchNorm does (equal counts):
        # global var = mean of rank variances + variance of rank means. Unlike
        # E[x^2] - E[x]^2 this does not cancel catastrophically when |mean| >> std.
        local_var, local_mean = torch.var_mean(xf, dim=(0, 2, 3), unbiased=False)
        stats = _AllGather.apply(torch.cat([local_mean, local_var]))  # (world_size, 2C)
        rank_means, rank_vars = stats[:, :channels], stats[:, channels:]
        mean = rank_means.mean(dim=0)
        var = rank_vars.mean(dim=0) + (rank_means - mean).pow(2).mean(dim=0)

        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
            count = x.shape[0] * x.shape[2] * x.shape[3] * world_size
            # Running variance is unbiased, as in nn.BatchNorm2d and nn.SyncBatchNorm.
            unbiased_var = var.detach() * (count / max(count - 1, 1))
            self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            self.running_var.mul_(1 - momentum).add_(unbiased_var, alpha=momentum)

        # Centre first: x * scale - mean * scale would cancel just like the variance did.
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        out = (xf - mean.reshape(1, -1, 1, 1)) * scale.reshape(1, -1, 1, 1)
        if self.affine:
            out = out + self.bias.reshape(1, -1, 1, 1)
        return out.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every `NaiveSyncBatchNorm` in `module` (recursively) by ``nn.SyncBatchNorm``.

    The trainer calls this on CUDA before wrapping the model in DDP: ``nn.SyncBatchNorm`` uses
    NCCL kernels, `NaiveSyncBatchNorm` also runs on CPU with gloo. The new layers take over the
    very parameter and buffer objects of the old ones (as torch's own
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` does), so an optimizer built before the
    conversion still steps the BatchNorm scales and shifts, and ``requires_grad`` and
    train/eval mode carry over. Plain ``BatchNorm2d`` layers stay unsynchronised (a
    config asks for "BN" when it means per-rank statistics).

    Returns:
        The converted module (a new object when `module` itself is a NaiveSyncBatchNorm).
    """
    if isinstance(module, NaiveSyncBatchNorm):
        sync = nn.SyncBatchNorm(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
            device="meta",  # replaced below: nothing is allocated twice
        )
        # The objects themselves, not copies of their values.
        for name, value in list(module._parameters.items()):
            sync._parameters[name] = value
        for name, value in list(module._buffers.items()):
            sync._buffers[name] = value
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def get_norm(
    norm: str | None, num_channels: int, *, eps: float = 1e-5, momentum: float = 0.1
) -> nn.Module | None:
    """Build a normalisation layer by name.

    Args:
        norm: "BN", "SyncBN", "naiveSyncBN", "nnSyncBN", "FrozenBN", "GN" (32 groups) or ""/None
            for no normalisation.
        num_channels: number of channels of the normalised feature map.
        eps: added to the variance (torchvision's MobileNetV3 uses 1e-3).
        momentum: of the running statistics of the batch norms (ignored by FrozenBN and GN).

    Returns:
        The module, or None for "".
    """
    if not norm:
        return None
    builders = {
        "BN": lambda c: nn.BatchNorm2d(c, eps=eps, momentum=momentum),
        "SyncBN": lambda c: NaiveSyncBatchNorm(c, eps=eps, momentum=momentum),
        "naiveSyncBN": lambda c: NaiveSyncBatchNorm(c, eps=eps, momentum=momentum),
        "nnSyncBN": lambda c: nn.SyncBatchNorm(c, eps=eps, momentum=momentum),
        "FrozenBN": lambda c: FrozenBatchNorm2d(c, eps=eps),
        "GN": lambda c: nn.GroupNorm(32, c, eps=eps),
    }
    if norm not in builders:
        raise ValueError(
            f"Unknown norm {norm!r}; use one of {sorted(builders)} or '' for no normalisation."
        )
    return builders[norm](num_channels)
