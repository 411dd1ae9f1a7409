"""Test-time resizing with detectron2's `ResizeShortestEdge` arithmetic and PIL interpolation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = ["resize_image", "shortest_edge_size"]


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """Output (H, W) of detectron2's ResizeShortestEdge for one short-side length.

    The short side becomes `short`, the long side scales with it, and both shrink if the long
    side would exceed `max_size`; sizes are rounded half up. ``short == 0`` keeps the size, as
    detectron2 turns that case into a no-op.
    """
    if short == 0:
        return height, width
    scale = short / min(height, width)
    if height < width:
        new_h, new_w = float(short), scale * width
    else:
        new_h, new_w = scale * height, float(short)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a uint8 image bilinearly with PIL, as detectron2's `ResizeTransform` does.

    Args:
        image: uint8 ``(3, H, W)``.
        size: output ``(H', W')``.

    Returns:
        uint8 ``(3, H', W')`` on the input's device.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    hwc = image.permute(1, 2, 0).cpu().numpy()
    resized = Image.fromarray(np.ascontiguousarray(hwc)).resize(
        (size[1], size[0]), Image.Resampling.BILINEAR
    )
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).to(image.device)
