"""Result files: the pixels of Pillow's default encoding, atomic writes, and nothing replaced
that a prediction did not write."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from atrous.inference.confidence import Confidence, read_png16, save_png16
from atrous.inference.predictor import SegmentationResult
from atrous.inference.writer import (
    RECORD_NAME,
    OverlayVideoWriter,
    PredictionWriter,
    comparison_picture,
    present_classes,
    write_label_map,
    write_picture,
)
from atrous.utils.visualize import colorize, draw_legend, heatmap, overlay, save_palette_png

NAMES = ["road", "sidewalk", "building", "sky"]
COLORS = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (70, 130, 180)]


def _result(height=48, width=80, seed=0) -> tuple[np.ndarray, SegmentationResult]:
    """A photo and a prediction with regions (as a model's) and noise (as a photo's)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    labels = np.zeros((height, width), np.int64)
    labels[: height // 3] = 3
    labels[height // 2 :, width // 2 :] = 2
    labels[height // 2 :, : width // 4] = 1
    max_prob = rng.uniform(0.25, 1.0, (height, width)).astype(np.float32)
    entropy = rng.uniform(0.0, 1.0, (height, width)).astype(np.float32)
    return image, SegmentationResult(labels=labels, confidence=Confidence(max_prob, entropy))


def _pixels(path) -> tuple[np.ndarray, str, list[int] | None]:
    with Image.open(path) as img:
        return np.asarray(img), img.mode, img.getpalette()


def test_written_pixels_equal_those_of_pillows_default_encoding(tmp_path):
    """Every picture decodes to what the writing before the pipeline (Pillow's default PNG
    encoding, np.unique for the legend) produced."""
    image, result = _result()
    writer = PredictionWriter(
        tmp_path / "new",
        class_names=NAMES,
        colors=COLORS,
        opacity=0.7,
        confidence=True,
        min_confidence=0.5,
    )
    written = writer.write("sub/x", image, result)
    assert [p.name for p in written] == [
        "x_labels.png",
        "x_overlay.png",
        "x_legend.png",
        "x_confidence.png",
        "x_entropy.png",
        "x_confidence_heatmap.png",
    ]
    old = tmp_path / "old"
    old.mkdir()
    save_palette_png(old / "x_labels.png", result.labels, COLORS)
    picture = overlay(
        image,
        result.labels,
        COLORS,
        opacity=0.7,
        confidence=result.confidence.max_prob,
        min_confidence=0.5,
    )
    Image.fromarray(picture).save(old / "x_overlay.png")
    present = [int(c) for c in np.unique(result.labels) if 0 <= c < len(NAMES)]
    draw_legend(present, NAMES, COLORS).save(old / "x_legend.png")
    save_png16(old / "x_confidence.png", result.confidence.max_prob)
    save_png16(old / "x_entropy.png", result.confidence.entropy)
    Image.fromarray(heatmap(result.confidence.max_prob)).save(old / "x_confidence_heatmap.png")
    for path in written:
        got, expected = _pixels(path), _pixels(old / path.name)
        np.testing.assert_array_equal(got[0], expected[0], err_msg=path.name)
        assert got[0].dtype == expected[0].dtype and got[1:] == expected[1:], path.name
    np.testing.assert_allclose(read_png16(written[3]), result.confidence.max_prob, atol=0.5 / 65535)
    assert not [p for p in (tmp_path / "new").rglob("*") if ".tmp" in p.name]


def test_present_classes_equals_np_unique():
    rng = np.random.default_rng(1)
    for labels in [
        rng.integers(0, 5, (7, 9)),
        np.array([[0, 255], [3, 3]]),
        np.array([[-1, 2], [7, 2]]),
        np.zeros((0, 4), np.int64),
        np.array([[2, 2]], np.uint8),
    ]:
        expected = [int(c) for c in np.unique(labels) if 0 <= c < 4]
        assert present_classes(labels, 4) == expected


def test_legends_are_drawn_once_per_set_of_classes(tmp_path, monkeypatch):
    import atrous.inference.writer as writer_module

    calls = []
    real = writer_module.draw_legend
    monkeypatch.setattr(
        writer_module, "draw_legend", lambda *a, **k: calls.append(a[0]) or real(*a, **k)
    )
    writer = PredictionWriter(tmp_path, class_names=NAMES, colors=COLORS)
    image, result = _result()
    for name in ("a", "b"):
        writer.write(name, image, result)
    other = SegmentationResult(labels=np.zeros_like(result.labels))
    writer.write("c", image, other)
    assert calls == [(0, 1, 2, 3), (0,)]
    assert (tmp_path / "a_legend.png").read_bytes() == (tmp_path / "b_legend.png").read_bytes()


def test_files_the_predictions_did_not_write_are_never_replaced(tmp_path):
    image, result = _result()
    writer = PredictionWriter(tmp_path, class_names=NAMES, colors=COLORS)
    writer.write("a", image, result)
    writer.write("a", image, result)  # its own files: replaced on a rerun
    (tmp_path / "b_overlay.png").write_bytes(b"the user's own picture")
    with pytest.raises(FileExistsError, match=r"b_overlay\.png exists and was not written"):
        writer.write("b", image, result)
    assert (tmp_path / "b_overlay.png").read_bytes() == b"the user's own picture"
    assert not (tmp_path / "b_labels.png").exists()  # nothing of that image is written
    # a later run (a new writer) reads the record of the earlier one
    again = PredictionWriter(tmp_path, class_names=NAMES, colors=COLORS)
    again.write("a", image, result)
    listed = (tmp_path / RECORD_NAME).read_text().split()
    assert listed == ["a_labels.png", "a_overlay.png", "a_legend.png"]


def test_labelids_and_label_maps(tmp_path):
    writer = PredictionWriter(tmp_path, class_names=NAMES, colors=COLORS)
    _, result = _result()
    lut = np.array([7, 8, 11, 23], np.uint8)
    path = writer.write_labelids(
        "berlin/x", "/d/berlin_000001_000002_leftImg8bit.png", result.labels, lut
    )
    assert path == tmp_path / "berlin" / "berlin_000001_000002_leftImg8bit_labelIds.png"
    np.testing.assert_array_equal(_pixels(path)[0], lut[result.labels])
    with pytest.raises(ValueError, match="not a Cityscapes file name"):
        writer.write_labelids("y", "holiday.png", result.labels, lut)
    write_label_map(tmp_path / "demo" / "labels.png", result.labels, COLORS)
    labels, mode, _ = _pixels(tmp_path / "demo" / "labels.png")
    assert mode == "P"
    np.testing.assert_array_equal(labels, result.labels)


def test_comparison_picture_is_photo_overlay_and_ground_truth(tmp_path):
    image, result = _result()
    gt = result.labels.copy()
    gt[0, 0] = -1  # ignore: black
    picture = comparison_picture(image, result.labels, COLORS, ground_truth=gt)
    expected = np.concatenate(
        [image, overlay(image, result.labels, COLORS, opacity=0.6), colorize(gt, COLORS)], axis=1
    )
    np.testing.assert_array_equal(picture, expected)
    assert comparison_picture(image, result.labels, COLORS).shape == (48, 160, 3)
    path = write_picture(tmp_path / "p.png", picture)
    np.testing.assert_array_equal(_pixels(path)[0], picture)


def test_overlay_video_is_published_with_its_frames(tmp_path):
    import cv2

    writer = PredictionWriter(tmp_path, class_names=NAMES, colors=COLORS)
    image, result = _result(48, 64)
    with OverlayVideoWriter(tmp_path / "v_overlay.mp4", fps=5, size=(48, 64), writer=writer) as v:
        for _ in range(3):
            v.add(image, result)
        assert not (tmp_path / "v_overlay.mp4").exists()  # only once complete
    capture = cv2.VideoCapture(str(tmp_path / "v_overlay.mp4"))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 3 and capture.get(cv2.CAP_PROP_FPS) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD_NAME, "v_overlay.mp4"]
    empty = OverlayVideoWriter(tmp_path / "e_overlay.mp4", fps=5, size=(48, 64), writer=writer)
    assert empty.close() is None and not (tmp_path / "e_overlay.mp4").exists()
    (tmp_path / "mine.mp4").write_bytes(b"a user's video")
    with pytest.raises(FileExistsError, match=r"mine\.mp4 exists"):
        OverlayVideoWriter(tmp_path / "mine.mp4", fps=5, size=(48, 64), writer=writer)
