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
    "png16_values",
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


# Rows are processed in slices of about this many bytes of float32 scores, so the temporaries of
# the softmax stay small next to the logits themselves (a 12 MP photo: ~0.9 GB of logits).
_CHUNK_BYTES = 16 << 20


def confidence_from_logits(logits: torch.Tensor) -> Confidence:
    """Max softmax probability and normalised entropy of ``(C, H, W)`` class scores.

    Computed a slice of rows at a time: besides the logits it holds the two ``(H, W)`` results
    and temporaries of about 16 MiB, whatever the image size.

    Args:
        logits: ``(C, H, W)`` unnormalised scores (any float dtype, any device); ``-inf`` for a
            class that cannot occur is allowed.

    Returns:
        `Confidence` with ``(H, W)`` float32 numpy arrays.

    Raises:
        ValueError: the scores hold NaN or +inf (the model's weights are not finite).
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be (C, H, W), got shape {tuple(logits.shape)}")
    num_classes, height, width = (int(v) for v in logits.shape)
    max_prob = np.empty((height, width), np.float32)
    entropy = np.empty((height, width), np.float32)
    rows = max(1, _CHUNK_BYTES // max(1, 4 * num_classes * width))
    for top in range(0, height, rows):
        chunk = logits[:, top : top + rows].float()
        if bool(torch.isnan(chunk).any()) or bool(torch.isposinf(chunk).any()):
            raise ValueError(
                "the model's scores hold NaN or +inf, so no confidence can be computed: its "
                "weights are not finite (check the checkpoint, or the training that wrote it)."
            )
        log_p = torch.log_softmax(chunk, dim=0)
        p = log_p.exp()
        # 0 * log(0) is 0 in the limit; written out, -inf * 0 would be NaN.
        plogp = torch.where(p > 0, p * log_p, 0.0)
        ent = -plogp.sum(dim=0)
        if num_classes > 1:  # one class: p is 1 everywhere and the entropy is 0 already
            ent = ent / math.log(num_classes)
        max_prob[top : top + rows] = p.amax(dim=0).clamp(0.0, 1.0).cpu().numpy()
        # + 0.0 turns the -0.0 of a one-hot pixel into 0.0
        entropy[top : top + rows] = (ent.clamp(0.0, 1.0) + 0.0).cpu().numpy()
    return Confidence(max_prob=max_prob, entropy=entropy)


def png16_values(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] ``(H, W)`` as the uint16 ``round(v * 65535)`` a 16-bit PNG stores.

    Raises:
        ValueError: not ``(H, W)``, or values outside [0, 1] or NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected an (H, W) map, got shape {values.shape}")
    if values.size and (np.nanmin(values) < 0 or np.nanmax(values) > 1 or np.isnan(values).any()):
        raise ValueError("values must lie in [0, 1] to be stored as a 16-bit confidence PNG")
    return np.rint(values * PNG16_SCALE).astype(np.uint16)


def save_png16(path: str | os.PathLike[str], values: np.ndarray) -> None:
    """Write values in [0, 1] ``(H, W)`` as a 16-bit grayscale PNG holding ``round(v * 65535)``."""
    from PIL import Image

    encoded = png16_values(values)
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
