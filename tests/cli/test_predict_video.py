"""`atrous predict --input clip.mp4` on MP4 files written by OpenCV: overlay video, frames,
exported models, and damaged files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atrous.cli.main import main
from tests.helpers import SMALL_REFERENCE_OVERRIDES, V3PLUS_CONFIG

cv2 = pytest.importorskip("cv2")

FPS = 12.5
SIZE = (40, 56)  # H, W


@pytest.fixture
def model_args(reference_dir):
    return ["--config-file", str(V3PLUS_CONFIG)], [
        *SMALL_REFERENCE_OVERRIDES,
        "MODEL.WEIGHTS",
        str(reference_dir / "small_v3plus.pkl"),
        "INPUT.MIN_SIZE_TEST",
        "0",
    ]


def _write_clip(path: Path, frames: int = 12) -> Path:
    """An MP4 (MPEG-4 Part 2, ``mp4v``) with moving shapes on noise, written by OpenCV."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE[::-1])
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for i in range(frames):
        frame = rng.integers(0, 80, (*SIZE, 3), dtype=np.uint8)
        frame[5:25, 2 * i : 2 * i + 20] = (40, 200, 90)
        writer.write(frame)
    writer.release()
    return path


def _decoded_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))


def _predictor(opts):
    from atrous.config import get_cfg
    from atrous.inference import Predictor

    cfg = get_cfg()
    cfg.merge_from_file(str(V3PLUS_CONFIG))
    cfg.merge_from_list(opts)
    return Predictor(cfg)


def test_a_video_becomes_an_overlay_video_and_label_frames(tmp_path, model_args, capsys, caplog):
    clip = _write_clip(tmp_path / "clip.mp4")
    head, opts = model_args
    out = tmp_path / "out"
    code = main(["predict", *head, "--input", str(clip), "--output", str(out), "--frames",
                 "--batch-size", "2", *opts])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "clip.mp4: 12 frames in" in err and "frames/s) -> " in err
    video = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    assert video.get(cv2.CAP_PROP_FPS) == FPS
    assert (video.get(cv2.CAP_PROP_FRAME_HEIGHT), video.get(cv2.CAP_PROP_FRAME_WIDTH)) == SIZE
    assert video.get(cv2.CAP_PROP_FRAME_COUNT) == 12
    # the label maps are the predictor's on the decoded frames
    predictor = _predictor(opts)
    frames = _decoded_frames(clip)
    written = sorted((out / "clip_frames").glob("*_labels.png"))
    assert [p.name for p in written] == [f"{i:06d}_labels.png" for i in range(12)]
    for i in (0, 7, 11):
        expected = predictor(frames[i]).labels
        np.testing.assert_array_equal(np.asarray(Image.open(written[i])), expected)
    # the overlay frames are the overlays, up to the video codec's loss
    from atrous.utils.visualize import overlay

    meta_colors = Image.open(written[0]).getpalette()
    colors = [tuple(meta_colors[3 * c : 3 * c + 3]) for c in range(19)]
    _, first = video.read()
    drawn = overlay(frames[0], predictor(frames[0]).labels, colors)
    error = np.abs(cv2.cvtColor(first, cv2.COLOR_BGR2RGB).astype(int) - drawn.astype(int))
    assert error.mean() < 12
    # a rerun replaces its own files (and does not take its overlay video as an input); the
    # user's own files are never replaced
    own = out / "clip_overlay.mp4"
    rerun = ["predict", *head, "--input", str(clip), str(own), "--output", str(out), *opts]
    assert main(rerun) == 0
    assert not (out / "clip_overlay_overlay.mp4").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "clip_overlay.mp4").write_bytes(b"someone's video")
    code = main(["predict", *head, "--input", str(clip), "--output", str(mine), *opts])
    assert code == 1 and "was not written by atrous predict" in capsys.readouterr().err
    assert (mine / "clip_overlay.mp4").read_bytes() == b"someone's video"


def test_a_damaged_video_keeps_the_frames_before_the_damage(tmp_path, model_args, capsys):
    clip = _write_clip(tmp_path / "clip.mp4", frames=40)
    data = bytearray(clip.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = np.random.default_rng(1).bytes(2000)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    readable = len(_decoded_frames(damaged))
    assert 0 < readable < 39
    head, opts = model_args
    out = tmp_path / "out"
    code = main(["predict", *head, "--input", str(damaged), "--output", str(out), "--frames",
                 *opts])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert f"{damaged}: decoding stopped after frame {readable - 1}" in err
    assert "announces 40 frames: it is truncated or damaged" in err
    assert f"kept the {readable} frames before it" in err and "Traceback" not in err
    video = cv2.VideoCapture(str(out / "damaged_overlay.mp4"))
    assert video.get(cv2.CAP_PROP_FRAME_COUNT) == readable
    assert len(list((out / "damaged_frames").glob("*_labels.png"))) == readable
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_unreadable_videos_are_one_line_errors(tmp_path, model_args, capsys):
    clip = _write_clip(tmp_path / "clip.mp4")
    truncated = tmp_path / "truncated.mp4"  # its index (moov) was at the end
    truncated.write_bytes(clip.read_bytes()[: os.path.getsize(clip) // 2])
    (tmp_path / "garbage.avi").write_bytes(b"not a video" * 50)
    head, opts = model_args
    out = tmp_path / "out"
    code = main(["predict", *head, "--input", str(truncated), str(tmp_path / "garbage.avi"),
                 str(clip), "--output", str(out), *opts])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "2 of 3 inputs failed" in err
    assert f"{truncated}: not a video OpenCV can open" in err
    assert "garbage.avi: not a video OpenCV can open" in err
    assert sorted(p.name for p in out.glob("*.mp4")) == ["clip_overlay.mp4"]


def test_exported_models_predict_videos(tmp_path, model_args, reference_exports):
    clip = _write_clip(tmp_path / "clip.mp4", frames=4)
    head, opts = model_args
    graph_opts = [*SMALL_REFERENCE_OVERRIDES, "INPUT.MIN_SIZE_TEST", "0"]
    common = ["--input", str(clip), "--frames"]
    assert main(["predict", *head, *common, "--output", str(tmp_path / "torch"), *opts]) == 0
    for run in ("onnx", "openvino"):
        args = [*head, "--model", str(reference_exports[run]), *common]
        assert main(["predict", *args, "--output", str(tmp_path / run), *graph_opts]) == 0, run
        for i in range(4):
            name = f"clip_frames/{i:06d}_labels.png"
            np.testing.assert_array_equal(
                np.asarray(Image.open(tmp_path / run / name)),
                np.asarray(Image.open(tmp_path / "torch" / name)),
            )
        assert (tmp_path / run / "clip_overlay.mp4").is_file()
