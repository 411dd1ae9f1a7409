"""Test-time resizing of image tensors, by the data pipeline's `ResizeShortestEdge` rules."""

from __future__ import annotations

import numpy as np
import torch

from atrous.data.transforms import ResizeTransform, resize_shortest_edge_shape

__all__ = ["resize_image", "shortest_edge_size"]


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """Output (H, W) of detectron2's ResizeShortestEdge for one short-side length.

    The short side becomes `short`, the long side scales with it, and both shrink if the long
    side would exceed `max_size`; sizes are rounded half up. ``short == 0`` keeps the size, as
    detectron2 turns that case into a no-op.
    """
    if short == 0:
        return height, width
    # The data pipeline's rule (one place for detectron2's arithmetic).
    return resize_shortest_edge_shape(height, width, short, max_size)


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
    h, w = image.shape[-2:]
    hwc = image.permute(1, 2, 0).cpu().numpy()
    # The data pipeline's image resize, so test-time augmentation matches the test loader.
    resized = ResizeTransform(h=h, w=w, new_h=size[0], new_w=size[1]).apply_image(hwc)
    return torch.from_numpy(np.array(resized, order="C")).permute(2, 0, 1).to(image.device)
