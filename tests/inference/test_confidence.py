"""Max probability and entropy from logits, and their 16-bit PNG files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.inference.confidence import (
    PNG16_SCALE,
    confidence_from_logits,
    read_png16,
    save_png16,
)


def test_values_on_a_hand_made_logits_tensor():
    # 3 classes, 1 x 4 pixels: uniform, one-hot-ish, two-way tie, and a huge logit.
    logits = torch.tensor(
        [
            [[0.0, math.log(8.0), 0.0, 1000.0]],
            [[0.0, 0.0, 0.0, 0.0]],
            [[0.0, 0.0, -float("inf"), -1000.0]],
        ]
    )
    conf = confidence_from_logits(logits)
    assert conf.max_prob.shape == conf.entropy.shape == (1, 4)
    assert conf.max_prob.dtype == np.float32
    # pixel 1: probabilities 8/10, 1/10, 1/10
    p = np.array([0.8, 0.1, 0.1])
    h1 = -(p * np.log(p)).sum() / math.log(3)
    # pixel 2: 1/2, 1/2, 0 (the -inf class contributes 0, not NaN)
    h2 = math.log(2) / math.log(3)
    np.testing.assert_allclose(conf.max_prob[0], [1 / 3, 0.8, 0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(conf.entropy[0], [1.0, h1, h2, 0.0], rtol=1e-6, atol=1e-7)
    assert np.isfinite(conf.entropy).all() and not np.signbit(conf.entropy).any()


def test_half_precision_and_single_class_logits():
    logits = torch.randn(5, 3, 4)
    half = confidence_from_logits(logits.half())
    full = confidence_from_logits(logits.half().float())
    np.testing.assert_array_equal(half.max_prob, full.max_prob)  # computed in float32
    one = confidence_from_logits(torch.randn(1, 2, 2))
    np.testing.assert_array_equal(one.max_prob, np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(one.entropy, np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        confidence_from_logits(torch.zeros(2, 3))


def test_png16_round_trip_keeps_the_documented_scale(tmp_path):
    values = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, 1 / 3]], dtype=np.float32)
    save_png16(tmp_path / "c.png", values)
    with Image.open(tmp_path / "c.png") as img:
        assert img.format == "PNG" and img.mode.startswith("I")
        raw = np.asarray(img)
    np.testing.assert_array_equal(raw, np.rint(values.astype(np.float64) * 65535))
    assert raw[1, 1] == PNG16_SCALE == 65535 and raw[0, 2] == 32768
    np.testing.assert_allclose(read_png16(tmp_path / "c.png"), values, atol=0.5 / 65535)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        save_png16(tmp_path / "bad.png", np.array([[1.5]]))


def test_non_finite_scores_are_one_clear_error_and_large_maps_are_computed_in_slices():
    logits = torch.zeros(3, 4, 5)
    logits[1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match="weights are not finite"):
        confidence_from_logits(logits)
    logits[1, 2, 3] = float("-inf")  # a class that cannot occur is fine
    assert confidence_from_logits(logits).max_prob[2, 3] == pytest.approx(0.5)
    # Many rows, computed a slice at a time, equal the whole-tensor formula.
    big = torch.randn(19, 700, 1000)
    result = confidence_from_logits(big)
    p = big.softmax(0)
    torch.testing.assert_close(torch.from_numpy(result.max_prob), p.amax(0))
