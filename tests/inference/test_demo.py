"""The demo page's pieces that need no browser: area shares, legend, colour bar, timing."""

from __future__ import annotations

import numpy as np
import pytest

from atrous.inference.demo import area_table, colorbar_html, legend_html, segment_for_demo

NAMES = ["road", "car <4 wheels>", "sky"]
COLORS = [(128, 64, 128), (0, 0, 142), (70, 130, 180)]


def test_area_table_lists_present_classes_largest_first():
    labels = np.array([[2, 2, 2, 0], [2, 0, 2, 2]])
    assert area_table(labels, NAMES) == [[2, "sky", 75.0], [0, "road", 25.0]]
    assert area_table(np.zeros((0, 3), np.int64), NAMES) == []


def test_legend_shows_swatches_and_escapes_names():
    text = legend_html([1, 0], NAMES, COLORS)
    assert text.index("car &lt;4 wheels&gt;") < text.index("road")
    assert "rgb(0, 0, 142)" in text and "<4" not in text
    assert "Upload an image" in legend_html([], NAMES, COLORS)
    assert colorbar_html().count("rgb(") == 11


def test_segment_for_demo_returns_the_predictors_labels_and_confidence(tiny_cfg, model):
    from atrous.inference import Predictor

    tiny_cfg.INPUT.MIN_SIZE_TEST = 0
    predictor = Predictor(tiny_cfg, model=model)
    image = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    result = segment_for_demo(predictor, image)
    expected = predictor(image, return_confidence=True)
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_array_equal(result.max_prob, expected.confidence.max_prob)
    assert result.seconds > 0


def test_a_missing_gradio_names_the_extra(monkeypatch):
    import sys

    from atrous.inference.demo import import_gradio

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")
    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'atrous\[demo\]'"):
        import_gradio()
    assert __import__("os").environ["GRADIO_ANALYTICS_ENABLED"] == "False"
