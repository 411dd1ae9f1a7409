"""Semantic segmentation losses: cross-entropy and DeepLab's hard pixel mining."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DeepLabCE", "build_sem_seg_loss"]


class DeepLabCE(nn.Module):
    """Cross-entropy averaged over the hardest ``top_k_percent_pixels`` of all pixels in the batch.

    Ignored pixels get a loss of 0 but stay in the pool they are ranked in, and the pool spans
    the whole batch, exactly as in projects/DeepLab. With ``top_k_percent_pixels == 1`` this is the
    mean over all pixels (ignored ones included as zeros).

    Args:
        ignore_label: label value excluded from the loss.
        top_k_percent_pixels: fraction of pixels kept, in (0, 1].
    """

    def __init__(self, *, ignore_label: int = 255, top_k_percent_pixels: float = 0.2) -> None:
        super().__init__()
        if not 0.0 < top_k_percent_pixels <= 1.0:
            raise ValueError(f"top_k_percent_pixels must be in (0, 1], got {top_k_percent_pixels}.")
        self.ignore_label = ignore_label
        self.top_k_percent_pixels = top_k_percent_pixels

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits (N, C, H, W), labels (N, H, W) int64 -> scalar loss."""
        pixel_losses = F.cross_entropy(
            logits, labels, ignore_index=self.ignore_label, reduction="none"
        ).reshape(-1)
        if self.top_k_percent_pixels == 1.0:
            return pixel_losses.mean()
        top_k = int(self.top_k_percent_pixels * pixel_losses.numel())
        return torch.topk(pixel_losses, top_k, sorted=False).values.mean()


class _CrossEntropy(nn.Module):
    def __init__(self, *, ignore_label: int) -> None:
        super().__init__()
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over non-ignored pixels; logits (N, C, H, W), labels (N, H, W)."""
        return F.cross_entropy(logits, labels, ignore_index=self.ignore_label, reduction="mean")


def build_sem_seg_loss(
    loss_type: str, *, ignore_label: int, top_k_percent_pixels: float = 0.2
) -> nn.Module:
    """ "cross_entropy" or "hard_pixel_mining" (top 20% by default, as the original)."""
    if loss_type == "cross_entropy":
        return _CrossEntropy(ignore_label=ignore_label)
    if loss_type == "hard_pixel_mining":
        return DeepLabCE(ignore_label=ignore_label, top_k_percent_pixels=top_k_percent_pixels)
    raise ValueError(
        f"Unknown MODEL.SEM_SEG_HEAD.LOSS_TYPE {loss_type!r}; use 'cross_entropy' or "
        "'hard_pixel_mining'."
    )
