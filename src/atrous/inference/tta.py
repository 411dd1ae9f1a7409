"""Test-time augmentation: short-side scales and horizontal flips, probabilities averaged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .resize import resize_image, shortest_edge_size

__all__ = ["SemanticSegmentorWithTTA"]


class SemanticSegmentorWithTTA(nn.Module):
    """Wraps a segmentor; averages its softmax probabilities over scales and flips.

    Each input image is resized with ResizeShortestEdge(min_size, max_size) for every size in
    `min_sizes` (and also mirrored when `flip`), the wrapped model predicts at the requested
    output size (``height`` x ``width``), mirrored predictions are mirrored back, and the softmax
    probabilities are averaged. The output keeps the segmentor's contract: ``"sem_seg"`` holds
    ``log`` of the averaged probabilities, which are valid logits (their softmax gives the
    averaged probabilities back and their argmax is the averaged prediction).

    Args:
        model: a module with the segmentor's inference contract (list of dicts in, list of
            ``{"sem_seg": (C, height, width)}`` out).
        min_sizes: short-side lengths; 0 means the input size.
        max_size: upper bound of the long side.
        flip: also run every scale mirrored horizontally.
    """

    def __init__(
        self, model: nn.Module, *, min_sizes: Sequence[int], max_size: int, flip: bool
    ) -> None:
        super().__init__()
        if not min_sizes:
            raise ValueError("TEST.AUG.MIN_SIZES must list at least one size")
        self.model = model
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)
        self.flip = flip

    def _probabilities(self, inp: dict[str, Any]) -> torch.Tensor:
        image = inp["image"]
        h, w = int(image.shape[-2]), int(image.shape[-1])
        height, width = int(inp.get("height", h)), int(inp.get("width", w))
        total = None
        count = 0
        for min_size in self.min_sizes:
            resized = resize_image(image, shortest_edge_size(h, w, min_size, self.max_size))
            for flipped in (False, True) if self.flip else (False,):
                x = resized.flip(-1) if flipped else resized
                logits = self.model([{"image": x, "height": height, "width": width}])[0]
                probs = logits["sem_seg"].float().softmax(dim=0)
                # At most three full-size buffers at a time (the sum, the logits, their
                # softmax): each is dropped as soon as the next exists.
                logits = None
                if flipped:
                    probs = probs.flip(-1)
                total = probs if total is None else total.add_(probs)
                probs = None
                count += 1
        assert total is not None
        return total.div_(count)

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
        """Args/returns as the segmentor at inference; ``"sem_seg"`` is log-probabilities."""
        results = []
        with torch.no_grad():
            for inp in batched_inputs:
                probs = self._probabilities(inp)
                # log(0) would give -inf, and -inf minus -inf NaN in later arithmetic
                results.append({"sem_seg": probs.clamp_min_(torch.finfo(probs.dtype).tiny).log_()})
        return results
