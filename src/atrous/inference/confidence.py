"""Per-pixel confidence of a prediction: the top class's softmax probability and the entropy.

Both come from the logits through ``log_softmax``, which stays finite where ``softmax`` followed
by ``log`` would underflow to ``log(0)`` for confident pixels.

On disk (``atrous predict --confidence``) they are 16-bit grayscale PNGs, one value per pixel:

* ``<name>_confidence.png``: ``round(p * 65535)`` for the max probability ``p`` in [0, 1];
  read back with ``np.asarray(Image.open(f)) / 65535``.
* ``<name>_entropy.png``: ``round(H / log(C) * 65535)`` for the entropy ``H`` (in nats) of the
  C-class distribution, so 0 is a one-hot prediction and 65535 the uniform one; read back
  with ``np.asarray(Image.open(f)) / 65535 * log(C)`` to get nats.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "PNG16_SCALE",
    "Confidence",
    "confidence_from_logits",
    "read_png16",
    "save_png16",
]

PNG16_SCALE = 65535


@dataclass
class Confidence:
    """Per-pixel confidence of one image's prediction.

    Attributes:
        max_prob: float32 ``(H, W)``, the winning class's softmax probability, in [1/C, 1].
        entropy: float32 ``(H, W)``, the entropy of the softmax divided by ``log(C)``, in [0, 1]
            (0: all mass on one class; 1: uniform); all zeros when C is 1.
    """

    max_prob: np.ndarray
    entropy: np.ndarray


def confidence_from_logits(logits: torch.Tensor) -> Confidence:
    """Max softmax probability and normalised entropy of ``(C, H, W)`` class scores.

    Args:
        logits: ``(C, H, W)`` unnormalised scores (any float dtype, any device); ``-inf`` for a
            class that cannot occur is allowed.

    Returns:
        `Confidence` with ``(H, W)`` float32 numpy arrays.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be (C, H, W), got shape {tuple(logits.shape)}")
    num_classes = logits.shape[0]
    log_p = torch.log_softmax(logits.float(), dim=0)
    p = log_p.exp()
    max_prob = p.amax(dim=0)
    # 0 * log(0) is 0 in the limit; written out, -inf * 0 would be NaN.
    plogp = torch.where(p > 0, p * log_p, torch.zeros_like(p))
    entropy = -plogp.sum(dim=0)
    if num_classes > 1:  # one class: p is 1 everywhere and the entropy is 0 already
        entropy = entropy / math.log(num_classes)
    return Confidence(
        max_prob=max_prob.clamp(0.0, 1.0).cpu().numpy(),
        # + 0.0 turns the -0.0 of a one-hot pixel into 0.0
        entropy=(entropy.clamp(0.0, 1.0) + 0.0).cpu().numpy(),
    )


def save_png16(path: str | os.PathLike[str], values: np.ndarray) -> None:
    """Write values in [0, 1] ``(H, W)`` as a 16-bit grayscale PNG holding ``round(v * 65535)``."""
    from PIL import Image

    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected an (H, W) map, got shape {values.shape}")
    if values.size and (np.nanmin(values) < 0 or np.nanmax(values) > 1 or np.isnan(values).any()):
        raise ValueError("values must lie in [0, 1] to be stored as a 16-bit confidence PNG")
    encoded = np.rint(values * PNG16_SCALE).astype(np.uint16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(encoded).save(path, format="PNG")


def read_png16(path: str | os.PathLike[str]) -> np.ndarray:
    """The values in [0, 1] of a PNG written by `save_png16`, as float32 ``(H, W)``."""
    from PIL import Image

    with Image.open(path) as img:
        raw = np.asarray(img)
    if raw.dtype != np.uint16 and raw.dtype != np.int32:
        raise ValueError(f"{path} is not a 16-bit grayscale PNG (got {raw.dtype})")
    return (raw.astype(np.float32) / PNG16_SCALE).astype(np.float32)
