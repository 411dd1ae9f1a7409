"""Description of a feature map produced by a backbone."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride (relative to the input image) of a feature map."""

    channels: int
    stride: int
