"""Palette PNGs, overlays and legends."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from atrous.utils.visualize import (
    DIM_FACTOR,
    colorize,
    draw_legend,
    heatmap,
    overlay,
    palette_array,
    save_palette_png,
)

COLORS = [(128, 64, 128), (244, 35, 232), (70, 70, 70)]


def test_palette_png_keeps_class_ids_and_shows_colours(tmp_path):
    labels = np.array([[0, 1, 2], [2, 255, 0]], dtype=np.int64)
    save_palette_png(tmp_path / "p.png", labels, COLORS)
    with Image.open(tmp_path / "p.png") as img:
        assert img.mode == "P"
        np.testing.assert_array_equal(np.asarray(img), labels)
        palette = np.array(img.getpalette()[: 3 * 256]).reshape(256, 3)
        rgb = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(palette[:3], COLORS)
    np.testing.assert_array_equal(rgb[0, 1], COLORS[1])
    np.testing.assert_array_equal(rgb[1, 1], (0, 0, 0))  # ignore is black
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        save_palette_png(tmp_path / "bad.png", np.array([[300]]), COLORS)


def test_colorize_and_palette_table():
    table = palette_array(COLORS)
    assert table.shape == (256, 3) and tuple(table[2]) == COLORS[2] and tuple(table[3]) == (0, 0, 0)
    out = colorize(np.array([[2, 255]]), COLORS)
    assert (
        out.shape == (1, 2, 3) and tuple(out[0, 0]) == COLORS[2] and tuple(out[0, 1]) == (0, 0, 0)
    )


def test_overlay_blends_only_labelled_pixels():
    image = np.full((2, 2, 3), 200, dtype=np.uint8)
    labels = np.array([[0, 1], [255, 2]])
    np.testing.assert_array_equal(overlay(image, labels, COLORS, opacity=0.0), image)
    full = overlay(image, labels, COLORS, opacity=1.0)
    assert tuple(full[0, 1]) == COLORS[1] and tuple(full[1, 0]) == (200, 200, 200)
    half = overlay(image, labels, COLORS, opacity=0.5)
    assert tuple(half[0, 0]) == (164, 132, 164)  # (200 + colour) / 2, rounded
    with pytest.raises(ValueError, match="opacity"):
        overlay(image, labels, COLORS, opacity=1.5)
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, labels[:1], COLORS)


def test_legend_lists_the_given_classes():
    one = draw_legend([1], ["road", "sidewalk", "building"], COLORS)
    two = draw_legend([0, 2], ["road", "sidewalk", "building"], COLORS)
    assert two.height > one.height and one.width > 30
    pixels = set(map(tuple, np.asarray(two).reshape(-1, 3).tolist()))
    assert COLORS[0] in pixels and COLORS[2] in pixels and COLORS[1] not in pixels
    assert draw_legend([], ["road"], COLORS[:1]).height > 0


def test_min_confidence_dims_only_the_low_confidence_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (6, 7))
    labels[0, 0] = 255  # ignore: shows the photo, dimmed too when unsure
    confidence = rng.uniform(0.3, 1.0, (6, 7)).astype(np.float32)
    confidence[0, 0] = 0.1
    plain = overlay(image, labels, COLORS, opacity=0.6)
    dimmed = overlay(image, labels, COLORS, opacity=0.6, confidence=confidence, min_confidence=0.6)
    low = confidence < 0.6
    assert 0 < low.sum() < low.size
    np.testing.assert_array_equal(dimmed[~low], plain[~low])
    expected = np.clip(np.rint(
        np.where(labels[..., None] < 3, image * 0.4 + np.asarray(COLORS)[labels % 3] * 0.6, image)
        * DIM_FACTOR), 0, 255)  # fmt: skip
    np.testing.assert_allclose(dimmed[low], expected[low], atol=1)
    assert (dimmed[low].astype(int) <= plain[low]).all()
    # a threshold of 0 is the overlay without confidence, bit for bit
    np.testing.assert_array_equal(
        overlay(image, labels, COLORS, opacity=0.6, confidence=confidence), plain
    )
    with pytest.raises(ValueError, match="confidence map"):
        overlay(image, labels, COLORS, min_confidence=0.5)
    with pytest.raises(ValueError, match="min_confidence"):
        overlay(image, labels, COLORS, confidence=confidence, min_confidence=1.5)


def test_heatmap_runs_dark_to_bright():
    values = np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32)
    rgb = heatmap(values)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    brightness = rgb.astype(int).sum(axis=-1)[0]
    assert brightness[0] < brightness[1] < brightness[2]
    np.testing.assert_array_equal(rgb[0, 3], rgb[0, 0])  # NaN drawn as 0


def _overlay_by_the_formula(image, labels, colors, *, opacity, confidence, min_confidence):
    """The overlay computed per pixel in float32, as `overlay` did before its lookup table."""
    color = colorize(labels, colors).astype(np.float32)
    valid = ((labels >= 0) & (labels < len(colors)))[..., None]
    blended = image.astype(np.float32) * (1 - opacity) + color * opacity
    out = np.where(valid, blended, image.astype(np.float32))
    if min_confidence > 0.0:
        low = (np.asarray(confidence) < min_confidence)[..., None]
        out = np.where(low, out * DIM_FACTOR, out)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("opacity", [0.0, 0.1, 1 / 3, 0.5, 0.6, 0.7, 0.95, 1.0, np.float64(0.45)])
def test_overlay_table_gives_the_pixels_of_the_float_formula(opacity):
    # every photo value in every channel, for every class, outside the classes, dimmed or not
    rng = np.random.default_rng(0)
    colors = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(19)]
    colors += [(0, 0, 0), (255, 255, 255)]
    classes = np.arange(-1, len(colors) + 2)
    labels = np.repeat(classes, 256)[:, None]
    image = np.tile(np.arange(256, dtype=np.uint8), len(classes))[:, None, None].repeat(3, 2)
    image[:, 0, 1] = 255 - image[:, 0, 1]
    confidence = rng.random(labels.shape).astype(np.float32)
    for min_confidence in (0.0, 0.5):
        kwargs = dict(opacity=opacity, confidence=confidence, min_confidence=min_confidence)
        got = overlay(image, labels, colors, **kwargs)
        expected = _overlay_by_the_formula(image, labels, colors, **kwargs)
        assert got.dtype == np.uint8 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
