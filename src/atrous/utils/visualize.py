"""Pictures of label maps: palette PNGs, colour overlays on the photo, and legends."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Class names longer than this are refused where they are read (dataset YAML, bundle.json): a
# legend draws each name on one line, and a megabyte-long name is a picture megapixels wide.
MAX_CLASS_NAME_LENGTH = 200

__all__ = [
    "DIM_FACTOR",
    "MAX_CLASS_NAME_LENGTH",
    "colorize",
    "draw_legend",
    "heatmap",
    "overlay",
    "palette_array",
    "palette_image",
    "save_palette_png",
]

Color = tuple[int, int, int]


def palette_array(colors: Sequence[Color], *, ignore_color: Color = (0, 0, 0)) -> np.ndarray:
    """A 256-entry RGB lookup table: class ids get their colour, every other value `ignore_color`.

    Returns:
        uint8 array ``(256, 3)``.
    """
    if len(colors) > 255:
        raise ValueError(
            f"a palette PNG holds at most 255 classes besides ignore, got {len(colors)}"
        )
    table = np.tile(np.asarray(ignore_color, dtype=np.uint8), (256, 1))
    if len(colors):
        table[: len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    return table


def colorize(labels: np.ndarray, colors: Sequence[Color]) -> np.ndarray:
    """Colour a label map ``(H, W)``; values outside the classes (ignore) become black.

    Returns:
        uint8 RGB image ``(H, W, 3)``.
    """
    labels = np.asarray(labels)
    table = palette_array(colors)
    idx = np.where((labels >= 0) & (labels < 256), labels, 255).astype(np.uint8)
    return table[idx]


def palette_image(labels: np.ndarray, colors: Sequence[Color]) -> Image.Image:
    """A label map ``(H, W)`` as an indexed ("P" mode) image whose palette shows the class colours.

    The pixel values stay the class ids, so a PNG of it is both a picture and a valid label map
    that tools reading the indices (and ``np.asarray(Image.open(path))``) get back unchanged.

    Raises:
        ValueError: not ``(H, W)``, or values outside [0, 255].
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be (H, W), got {labels.shape}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError("label values must lie in [0, 255] to be stored in an indexed PNG")
    # Built from raw bytes: converting from "L" could remap indices.
    img = Image.new("P", (labels.shape[1], labels.shape[0]))
    img.frombytes(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    img.putpalette(palette_array(colors).reshape(-1).tolist())
    return img


def save_palette_png(
    path: str | os.PathLike[str], labels: np.ndarray, colors: Sequence[Color]
) -> None:
    """Write `palette_image` of a label map as a PNG file."""
    img = palette_image(labels, colors)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


# Brightness kept by the overlay pixels below `min_confidence`: dark enough to stand out, light
# enough that the photo and the class colour stay recognisable.
DIM_FACTOR = 0.35


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    colors: Sequence[Color],
    *,
    opacity: float = 0.5,
    confidence: np.ndarray | None = None,
    min_confidence: float = 0.0,
) -> np.ndarray:
    """Blend class colours over an RGB photo, optionally dimming the uncertain pixels.

    Args:
        image: uint8 RGB ``(H, W, 3)``.
        labels: class ids ``(H, W)``; pixels outside the classes keep the photo.
        colors: RGB per class.
        opacity: weight of the colour, 0 (photo only) to 1 (colours only).
        confidence: per-pixel max probability ``(H, W)`` in [0, 1]; needed when
            `min_confidence` is above 0.
        min_confidence: pixels whose confidence is below it are drawn at `DIM_FACTOR` of their
            brightness; all others are exactly what they are without it.

    Returns:
        uint8 RGB ``(H, W, 3)``.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and label map {labels.shape} differ in size")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    low = None
    if min_confidence > 0.0:
        if confidence is None:
            raise ValueError("min_confidence needs the per-pixel confidence map")
        if np.shape(confidence) != labels.shape:
            raise ValueError(
                f"confidence {np.shape(confidence)} and label map {labels.shape} differ in size"
            )
        low = np.asarray(confidence) < min_confidence
    # Every output value is a function of (class, channel, photo value, dimmed): computed once
    # for the 256 photo values in a table, then looked up per pixel. The table holds exactly the
    # float32 blend `photo * (1 - opacity) + colour * opacity` (times DIM_FACTOR where dimmed),
    # rounded, that a per-pixel computation gives, at a fraction of its memory traffic.
    table = _overlay_table(colors, opacity)
    num = len(colors)
    row = np.where((labels >= 0) & (labels < num), labels, num).astype(np.int32)
    if low is not None:
        row += low * np.int32(num + 1)  # the dimmed half of the table
    # flat index of (row, channel, value) in the (rows, 3, 256) table
    index = (row * np.int32(768))[..., None] + _CHANNEL_OFFSETS + image
    return table.reshape(-1)[index]


_CHANNEL_OFFSETS = np.array([0, 256, 512], dtype=np.int32)


def _overlay_table(colors: Sequence[Color], opacity: float) -> np.ndarray:
    """uint8 ``(2 * (C + 1), 3, 256)``: the overlay value of each class (row C: outside the
    classes, the photo itself) for each channel and photo value, then the same dimmed."""
    values = np.arange(256, dtype=np.float32)[None, None, :]
    color = np.zeros((len(colors), 3), np.uint8)
    if len(colors):
        color[:] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    blended = values * (1 - opacity) + color.astype(np.float32)[:, :, None] * opacity
    plain = np.concatenate([blended, np.broadcast_to(values, (1, 3, 256))])
    table = np.concatenate([plain, plain * DIM_FACTOR])
    return np.clip(np.rint(table), 0, 255).astype(np.uint8)


def heatmap(values: np.ndarray, *, cmap: str = "inferno") -> np.ndarray:
    """Colour a map of values in [0, 1] ``(H, W)`` with a matplotlib colour map (0: dark).

    Only the colour map's 256-entry table is used (no figure, no backend), so this is cheap and
    safe in a server process.

    Returns:
        uint8 RGB image ``(H, W, 3)``.
    """
    from matplotlib import colormaps

    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"expected an (H, W) map, got shape {values.shape}")
    table = (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    index = np.rint(np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * 255).astype(np.uint8)
    return table[index]


def draw_legend(
    class_ids: Sequence[int],
    class_names: Sequence[str],
    colors: Sequence[Color],
    *,
    swatch: int = 18,
    padding: int = 6,
) -> Image.Image:
    """An image listing the given classes, one colour swatch and name per row.

    Args:
        class_ids: ids to show, in order (typically the classes present in a prediction).
        class_names: name of every class id.
        colors: RGB of every class id.

    Returns:
        RGB PIL image (at least one row high, saying "no classes" when `class_ids` is empty).
    """
    font = ImageFont.load_default()
    rows = [(colors[i], f"{i}: {class_names[i]}") for i in class_ids] or [(None, "no classes")]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(int(probe.textlength(text, font=font)) for _, text in rows)
    row_h = swatch + padding
    width = padding * 3 + swatch + text_w
    height = padding + row_h * len(rows)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r, (color, text) in enumerate(rows):
        y = padding + r * row_h
        if color is not None:
            draw.rectangle(
                [padding, y, padding + swatch - 1, y + swatch - 1],
                fill=tuple(color),
                outline=(0, 0, 0),
            )
        draw.text((padding * 2 + swatch, y + 2), text, fill=(0, 0, 0), font=font)
    return img
