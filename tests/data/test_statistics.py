"""Dataset statistics: per-file defects, class counts, and class weights against a hand count."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from atrous.data.image_io import ColorCoding
from atrous.data.statistics import (
    class_weights,
    compute_statistics,
    inverse_sqrt_frequency_weights,
    median_frequency_weights,
    scan_pair,
)

NAMES = ("road", "car", "sign", "never")


def _tiny(tmp_path) -> list[dict]:
    """Two 2x4 label maps: A = 6 road + 2 car; B = 4 road + 3 sign + 1 ignored."""
    labels = {
        "a": [[0, 0, 0, 0], [0, 0, 1, 1]],
        "b": [[0, 0, 0, 0], [2, 2, 2, 255]],
    }
    records = []
    for name, rows in labels.items():
        Image.fromarray(np.full((2, 4, 3), ord(name), np.uint8)).save(tmp_path / f"{name}.png")
        Image.fromarray(np.array(rows, np.uint8)).save(tmp_path / f"{name}_m.png")
        records.append(
            {"file_name": str(tmp_path / f"{name}.png"),
             "sem_seg_file_name": str(tmp_path / f"{name}_m.png")}
        )  # fmt: skip
    return records


def test_counts_and_class_weights_match_a_hand_computation(tmp_path):
    stats = compute_statistics(_tiny(tmp_path), class_names=NAMES, progress=False)
    assert stats.problems == []
    assert stats.pixels.tolist() == [10, 2, 3, 0]
    assert stats.images.tolist() == [2, 1, 1, 0]
    # labelled pixels of the images containing the class: road in A (8) and B (7), ...
    assert stats.present_pixels.tolist() == [15, 8, 7, 0]
    assert stats.ignored_pixels == 1

    # Median frequency: freq = 10/15, 2/8, 3/7; median 3/7.
    expected_mf = [(3 / 7) / (10 / 15), (3 / 7) / (2 / 8), 1.0, 1.0]
    assert class_weights(stats, "median_frequency") == pytest.approx(expected_mf, rel=1e-12)
    assert expected_mf[:2] == pytest.approx([9 / 14, 12 / 7])
    # Inverse sqrt: freq = 10/15, 2/15, 3/15 of the 15 labelled pixels, then mean 1.
    raw = [math.sqrt(15 / 10), math.sqrt(15 / 2), math.sqrt(15 / 3)]
    expected_isf = [w / (sum(raw) / 3) for w in raw] + [1.0]
    assert class_weights(stats, "inverse_sqrt_frequency") == pytest.approx(expected_isf, rel=1e-12)
    with pytest.raises(ValueError, match="unknown class weight method 'inverse'"):
        class_weights(stats, "inverse")


def test_weight_functions_without_any_pixel_give_ones():
    assert median_frequency_weights([0, 0], [0, 0]) == [1.0, 1.0]
    assert inverse_sqrt_frequency_weights([0, 0]) == [1.0, 1.0]


def test_worker_processes_give_the_same_statistics(tmp_path):
    records = _tiny(tmp_path) * 3  # also: duplicate entries, counted once
    one = compute_statistics(records, class_names=NAMES, progress=False)
    two = compute_statistics(records, class_names=NAMES, progress=False, workers=2)
    assert one.to_json() == two.to_json()
    assert one.pixels.tolist() == [10, 2, 3, 0]
    assert [p["kind"] for p in one.problems] == ["duplicate_entry"] * 4


def test_labels_only_skips_the_images(tmp_path):
    records = _tiny(tmp_path)
    (tmp_path / "a.png").write_bytes(b"not an image")
    stats = compute_statistics(records, class_names=NAMES, progress=False, read_images=False)
    assert stats.problems == [] and stats.pixels.tolist() == [10, 2, 3, 0]
    stats = compute_statistics(records, class_names=NAMES, progress=False)
    assert [(p["kind"], p["file"]) for p in stats.problems] == [
        ("unreadable", records[0]["file_name"])
    ]


def test_an_unlisted_colour_is_reported_not_raised(tmp_path):
    rgb = np.zeros((2, 4, 3), np.uint8)
    rgb[0, 0] = (9, 9, 9)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    Image.fromarray(rgb).save(tmp_path / "i.png")
    record = {
        "file_name": str(tmp_path / "i.png"),
        "sem_seg_file_name": str(tmp_path / "m.png"),
        "sem_seg_color_coding": ColorCoding(colors=[(0, 0, 0), (255, 0, 0)]),
    }
    result = scan_pair((0, record), num_classes=2)
    ((kind, file, message),) = result.problems
    assert kind == "unknown_colors" and file == str(tmp_path / "m.png")
    assert "[9, 9, 9] on 1 pixels" in message
