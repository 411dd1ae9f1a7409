"""Semantic segmentation losses: cross-entropy and DeepLab's hard pixel mining, optionally with
a weight per class (MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ConfigError

__all__ = ["DeepLabCE", "UnresolvedClassWeights", "build_sem_seg_loss"]


def _weight_buffer(module: nn.Module, weight: Sequence[float] | torch.Tensor | None) -> None:
    """Store the class weights as a buffer that follows `.to()` but stays out of checkpoints
    (they come from the config, and a model trained with them loads into one without)."""
    if weight is None:
        module.register_buffer("weight", None, persistent=False)
        return
    tensor = torch.as_tensor(weight, dtype=torch.float32).reshape(-1)
    if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
        raise ValueError(f"class weights must be finite and >= 0, got {tensor.tolist()}")
    module.register_buffer("weight", tensor, persistent=False)


def _weight_for(weight: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    # cross_entropy wants the weight in the logits' dtype; under autocast it computes in float32
    # and casts both itself, so the float32 weights keep their precision.
    if weight is None or weight.dtype == logits.dtype or torch.is_autocast_enabled():
        return weight
    return weight.to(dtype=logits.dtype)


class DeepLabCE(nn.Module):
    """Cross-entropy averaged over the hardest ``top_k_percent_pixels`` of all pixels in the batch.

    Ignored pixels get a loss of 0 but stay in the pool they are ranked in, and the pool spans
    the whole batch, exactly as in projects/DeepLab. With ``top_k_percent_pixels == 1`` this is the
    mean over all pixels (ignored ones included as zeros).

    With class weights, as detectron2's ``DeepLabCE(weight=...)``: each pixel's loss is multiplied
    by the weight of its label *before* the top-k selection, and the kept losses are averaged
    over their count, not over their weights.

    Args:
        ignore_label: label value excluded from the loss.
        top_k_percent_pixels: fraction of pixels kept, in (0, 1].
        weight: one loss weight per class ``(C,)``, or None (all 1, the original).
    """

    def __init__(
        self,
        *,
        ignore_label: int = 255,
        top_k_percent_pixels: float = 0.2,
        weight: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < top_k_percent_pixels <= 1.0:
            raise ValueError(f"top_k_percent_pixels must be in (0, 1], got {top_k_percent_pixels}.")
        self.ignore_label = ignore_label
        self.top_k_percent_pixels = top_k_percent_pixels
        _weight_buffer(self, weight)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits (N, C, H, W), labels (N, H, W) int64 -> scalar loss."""
        pixel_losses = F.cross_entropy(
            logits,
            labels,
            weight=_weight_for(self.weight, logits),
            ignore_index=self.ignore_label,
            reduction="none",
        ).reshape(-1)
        if self.top_k_percent_pixels == 1.0:
            return pixel_losses.mean()
        top_k = int(self.top_k_percent_pixels * pixel_losses.numel())
        return torch.topk(pixel_losses, top_k, sorted=False).values.mean()


class _CrossEntropy(nn.Module):
    """Mean cross-entropy over non-ignored pixels; with class weights PyTorch's weighted mean,
    ``sum_i w[y_i] * loss_i / sum_i w[y_i]``."""

    def __init__(
        self, *, ignore_label: int, weight: Sequence[float] | torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.ignore_label = ignore_label
        _weight_buffer(self, weight)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits (N, C, H, W), labels (N, H, W) -> scalar."""
        return F.cross_entropy(
            logits,
            labels,
            weight=_weight_for(self.weight, logits),
            ignore_index=self.ignore_label,
            reduction="mean",
        )


class UnresolvedClassWeights(nn.Module):
    """The loss of a model whose class weights are computed from the training data
    (``"median_frequency"``, ``"inverse_sqrt_frequency"``) but were not passed in.

    Inference never calls the loss, so such a model evaluates, predicts and exports normally;
    training it raises, because the weights the config asks for are missing.
    """

    def __init__(self, *, method: str) -> None:
        super().__init__()
        self.method = method

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise ConfigError(
            f"MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS is {self.method!r}: the weights are computed from "
            "the training data by atrous.engine.Trainer (atrous.engine.resolve_class_weights); "
            "a model built elsewhere for training needs build_model(cfg, class_weights=[...])."
        )


def build_sem_seg_loss(
    loss_type: str,
    *,
    ignore_label: int,
    top_k_percent_pixels: float = 0.2,
    class_weights: Sequence[float] | None = None,
) -> nn.Module:
    """ "cross_entropy" or "hard_pixel_mining" (top 20% by default, as the original), optionally
    with one weight per class (None: unweighted, the original)."""
    if loss_type == "cross_entropy":
        return _CrossEntropy(ignore_label=ignore_label, weight=class_weights)
    if loss_type == "hard_pixel_mining":
        return DeepLabCE(
            ignore_label=ignore_label,
            top_k_percent_pixels=top_k_percent_pixels,
            weight=class_weights,
        )
    raise ValueError(
        f"Unknown MODEL.SEM_SEG_HEAD.LOSS_TYPE {loss_type!r}; use 'cross_entropy' or "
        "'hard_pixel_mining'."
    )
