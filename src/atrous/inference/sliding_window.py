"""Sliding-window inference: logits of overlapping windows, averaged where they overlap."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from atrous.modeling.segmentor import check_output_size

__all__ = ["SlidingWindowInference", "window_starts"]


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering ``[0, size)``; the last one ends exactly at `size`."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


class SlidingWindowInference(nn.Module):
    """Runs a segmentor on windows of an image and stitches their logits.

    Images no larger than the window are passed to the model whole, so the result is exactly
    whole-image inference there. Larger images are cut into windows of `window` pixels every
    `stride` pixels (the last window aligned with the border); every window's logits come from
    the model at the window's size, are summed into the image and divided by the number of
    windows covering each pixel, then resized to the requested ``height`` x ``width`` as the
    segmentor's post-processing does.

    Args:
        model: a module with the segmentor's inference contract.
        window: (H, W) of a window in input pixels.
        stride: (H, W) step between windows; smaller than the window gives overlaps.
        batch_size: windows run through the model at once (all windows have the same size, so
            batching adds no padding).
        max_output_bytes: refuse, before running any window, an image whose stitched logits at
            ``height`` x ``width`` would take more memory than this (TEST.MAX_OUTPUT_MB); 0 or
            negative: no limit. Applies when the model has a ``num_classes`` attribute.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        window: tuple[int, int],
        stride: tuple[int, int],
        batch_size: int = 1,
        max_output_bytes: int = 0,
    ) -> None:
        super().__init__()
        if len(window) != 2 or len(stride) != 2:
            raise ValueError(f"window {window} and stride {stride} must be (H, W) pairs")
        if any(s > w for s, w in zip(stride, window)):
            raise ValueError(
                f"stride {tuple(stride)} larger than window {tuple(window)} skips pixels"
            )
        self.model = model
        self.window = (int(window[0]), int(window[1]))
        self.stride = (int(stride[0]), int(stride[1]))
        self.batch_size = max(1, int(batch_size))
        self.max_output_bytes = int(max_output_bytes)

    def _stitch(self, image: torch.Tensor) -> torch.Tensor:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        wh, ww = min(self.window[0], h), min(self.window[1], w)
        boxes = [
            (y, x)
            for y in window_starts(h, wh, self.stride[0])
            for x in window_starts(w, ww, self.stride[1])
        ]
        total = count = None
        for i in range(0, len(boxes), self.batch_size):
            chunk = boxes[i : i + self.batch_size]
            inputs = [
                {"image": image[:, y : y + wh, x : x + ww], "height": wh, "width": ww}
                for y, x in chunk
            ]
            for (y, x), out in zip(chunk, self.model(inputs)):
                logits = out["sem_seg"].float()
                if total is None:
                    total = logits.new_zeros((logits.shape[0], h, w))
                    count = logits.new_zeros((1, h, w))
                total[:, y : y + wh, x : x + ww] += logits
                count[:, y : y + wh, x : x + ww] += 1
        assert total is not None and count is not None
        return total / count

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
        results = []
        for inp in batched_inputs:
            image = inp["image"]
            h, w = int(image.shape[-2]), int(image.shape[-1])
            if h <= self.window[0] and w <= self.window[1]:
                results.append(self.model([inp])[0])
                continue
            height, width = int(inp.get("height", h)), int(inp.get("width", w))
            num_classes = getattr(self.model, "num_classes", None)
            if self.max_output_bytes > 0 and num_classes is not None:
                # The windows are small; the stitched logits at (h, w) and then at the output
                # size are what may not fit.
                check_output_size(
                    num_classes=int(num_classes),
                    height=max(height, h),
                    width=max(width, w),
                    max_bytes=self.max_output_bytes,
                    name=str(inp.get("file_name", "image")),
                )
            with torch.no_grad():
                logits = self._stitch(image)
            if (height, width) != (h, w):
                logits = F.interpolate(
                    logits[None], size=(height, width), mode="bilinear", align_corners=False
                )[0]
            results.append({"sem_seg": logits})
        return results
