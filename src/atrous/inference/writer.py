"""Prediction results as files: label maps, overlays, legends, confidence maps, Cityscapes
submission files, comparison pictures and overlay videos.

Everything `atrous predict`, `atrous quickstart` and the demo write goes through here, from
explicit arguments. Pictures are drawn by `atrous.utils.visualize` and encoded here:

* PNGs are compressed with zlib's run-length strategy (`PNG_ZLIB_STRATEGY`) after PNG's row
  filters: the pixels are those of Pillow's default (level 6), the encoding of a photo-like
  overlay takes about a quarter of its time and the file is about the same size (filtered photo
  rows hold few repeated strings for level 6 to find; label maps hold long runs).
* every file is written to a temporary name in its folder and renamed into place, so a reader
  (or a rerun after a crash) sees the previous file or the complete new one, never a part.
* a `PredictionWriter` keeps a record of what it wrote in ``<output>/.atrous-predictions`` and
  never replaces a file that is not in that record (a photo, a user's own overlay): the image
  whose outputs would replace it is reported as failed instead.
"""

from __future__ import annotations

import io
import os
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from atrous.utils.file_io import atomic_write_bytes, temporary_name
from atrous.utils.visualize import (
    colorize,
    draw_legend,
    heatmap,
    overlay,
    palette_image,
)

__all__ = [
    "LABELIDS_SUFFIX",
    "OUTPUT_SUFFIXES",
    "PNG_ZLIB_STRATEGY",
    "RECORD_NAME",
    "OverlayVideoWriter",
    "PredictionWriter",
    "comparison_picture",
    "label_png_bytes",
    "png16_bytes",
    "present_classes",
    "rgb_png_bytes",
    "write_label_map",
    "write_picture",
]

Color = tuple[int, int, int]

# How every PNG written here is compressed (see the module's docstring).
PNG_ZLIB_STRATEGY = zlib.Z_RLE

# What `PredictionWriter.write` appends to an image's name, in the order written.
OUTPUT_SUFFIXES = (
    "_labels.png",
    "_overlay.png",
    "_legend.png",
    "_confidence.png",
    "_entropy.png",
    "_confidence_heatmap.png",
)
LABELIDS_SUFFIX = "_labelIds.png"
RECORD_NAME = ".atrous-predictions"

# Legends are cached by the set of classes shown: consecutive images (and video frames) mostly
# show the same classes, and drawing text costs more than the rest of the legend's file.
_LEGEND_CACHE_SIZE = 256


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_type=PNG_ZLIB_STRATEGY)
    return buffer.getvalue()


def label_png_bytes(labels: np.ndarray, colors: Sequence[Color]) -> bytes:
    """A label map ``(H, W)`` as indexed PNG bytes (`atrous.utils.visualize.palette_image`).

    Raises:
        ValueError: not ``(H, W)``, or values outside [0, 255].
    """
    return _png_bytes(palette_image(labels, colors))


def rgb_png_bytes(picture: np.ndarray) -> bytes:
    """An RGB ``(H, W, 3)`` (or grayscale ``(H, W)``) uint8 picture as PNG bytes."""
    return _png_bytes(Image.fromarray(np.ascontiguousarray(picture)))


def png16_bytes(values: np.ndarray) -> bytes:
    """Values in [0, 1] ``(H, W)`` as a 16-bit grayscale PNG holding ``round(v * 65535)``
    (the format of `atrous.inference.confidence`)."""
    from atrous.inference.confidence import png16_values

    return _png_bytes(Image.fromarray(png16_values(values)))


def present_classes(labels: np.ndarray, num_classes: int) -> list[int]:
    """The class ids in [0, num_classes) that occur in `labels`, ascending."""
    labels = np.asarray(labels)
    if labels.size and labels.min() >= 0 and np.issubdtype(labels.dtype, np.integer):
        # a count per value is one pass; np.unique sorts the whole map
        counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
        return [int(c) for c in np.flatnonzero(counts)]
    return [int(c) for c in np.unique(labels) if 0 <= c < num_classes]


def write_label_map(
    path: str | os.PathLike[str], labels: np.ndarray, colors: Sequence[Color]
) -> Path:
    """Write `label_png_bytes` to `path` atomically."""
    return atomic_write_bytes(path, label_png_bytes(labels, colors), durable=False)


def write_picture(path: str | os.PathLike[str], picture: np.ndarray) -> Path:
    """Write an RGB ``(H, W, 3)`` uint8 picture as a PNG, atomically."""
    return atomic_write_bytes(path, rgb_png_bytes(picture), durable=False)


def comparison_picture(
    photo: np.ndarray,
    labels: np.ndarray,
    colors: Sequence[Color],
    *,
    ground_truth: np.ndarray | None = None,
    opacity: float = 0.6,
) -> np.ndarray:
    """Photo | prediction overlaid on it | ground truth coloured, side by side.

    Args:
        photo: uint8 RGB ``(H, W, 3)``.
        labels: predicted class ids ``(H, W)``.
        colors: RGB per class.
        ground_truth: class ids ``(H, W)``, values outside the classes (ignore) drawn black;
            None leaves the third panel out.

    Returns:
        uint8 RGB ``(H, 2W or 3W, 3)``.
    """
    panels = [photo, overlay(photo, labels, colors, opacity=opacity)]
    if ground_truth is not None:
        panels.append(colorize(ground_truth, colors))
    return np.concatenate(panels, axis=1)


class _Record:
    """The files a `PredictionWriter` may replace: those listed in ``<root>/RECORD_NAME``.

    A file is listed before it is first written, so a run killed in between leaves a name
    whose file may be missing, never a file that was written but not listed.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / RECORD_NAME
        self._lock = threading.Lock()
        self._names: set[str] | None = None

    def _load(self) -> set[str]:
        if self._names is None:
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                text = ""
            self._names = set(text.splitlines())
        return self._names

    def claim(self, paths: Sequence[Path]) -> None:
        """Allow writing `paths`: each listed already or new (and then listed); all or none.

        Raises:
            FileExistsError: one of them exists and this folder's predictions did not write it.
        """
        with self._lock:
            names = self._load()
            new = []
            for path in paths:
                name = path.relative_to(self.root).as_posix()
                if name in names:
                    continue
                if os.path.lexists(path):
                    raise FileExistsError(
                        f"{path} exists and was not written by atrous predict; move it away or "
                        "choose another --output"
                    )
                new.append(name)
            if new:
                self.root.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write("".join(f"{name}\n" for name in new))
                names.update(new)


class PredictionWriter:
    """Writes one image's predictions under an output folder.

    For an image named ``<name>`` (a relative path without suffix): ``<name>_labels.png``
    (indexed PNG, pixel values are class ids, the palette the class colours),
    ``<name>_overlay.png`` (colours blended with the photo), ``<name>_legend.png`` (the classes
    present) and, with ``confidence``, ``<name>_confidence.png`` / ``<name>_entropy.png`` (16-bit,
    see `atrous.inference.confidence`) and ``<name>_confidence_heatmap.png``. With a
    ``labelids_lut`` it writes only Cityscapes ``*_labelIds.png`` files (`write_labelids`).

    Safe to call from several threads at once for different names.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        class_names: Sequence[str],
        colors: Sequence[Color],
        opacity: float = 0.5,
        confidence: bool = False,
        min_confidence: float = 0.0,
        overlays: bool = True,
        legends: bool = True,
    ) -> None:
        """
        Args:
            out_dir: the output folder (created when missing).
            class_names: name of every class id (legends).
            colors: RGB of every class id.
            opacity: colour weight of the overlay, 0 to 1.
            confidence: also write the confidence, entropy and heat-map pictures.
            min_confidence: overlay pixels whose top-class probability is below it are dimmed
                (the result must then carry its confidence).
            overlays, legends: write those pictures (a video's frames need only label maps).
        """
        self.out_dir = Path(out_dir)
        self.class_names = list(class_names)
        self.colors = [tuple(int(v) for v in c) for c in colors]
        self.opacity = opacity
        self.confidence = confidence
        self.min_confidence = min_confidence
        self.overlays = overlays
        self.legends = legends
        self._record = _Record(self.out_dir)
        self._legends: dict[tuple[int, ...], bytes] = {}

    def _put(self, path: Path, data: bytes) -> Path:
        self._record.claim([path])
        return atomic_write_bytes(path, data, durable=False)

    def legend_png(self, labels: np.ndarray) -> bytes:
        """The legend of the classes present in `labels`, PNG-encoded (cached by that set)."""
        present = tuple(present_classes(labels, len(self.class_names)))
        data = self._legends.get(present)
        if data is None:
            data = _png_bytes(draw_legend(present, self.class_names, self.colors))
            if len(self._legends) >= _LEGEND_CACHE_SIZE:
                self._legends.clear()
            self._legends[present] = data
        return data

    def overlay(self, image: np.ndarray, result: Any) -> np.ndarray:
        """The overlay picture of `result` (a `SegmentationResult`) on `image`."""
        conf = result.confidence
        return overlay(
            image,
            result.labels,
            self.colors,
            opacity=self.opacity,
            confidence=None if conf is None else conf.max_prob,
            min_confidence=self.min_confidence,
        )

    def write(self, name: str, image: np.ndarray, result: Any) -> list[Path]:
        """Write the pictures of one prediction.

        Args:
            name: the output name, a relative path without suffix (``city/x_leftImg8bit``).
            image: the photo, uint8 RGB ``(H, W, 3)``.
            result: its `SegmentationResult` (with ``confidence`` when ``confidence`` or
                ``min_confidence`` is set).

        Returns:
            The files written.

        Raises:
            FileExistsError: a file of this image exists and was not written by a prediction.
        """
        base = self.out_dir / name
        labels, conf = result.labels, result.confidence
        # Encode first and write after: an image whose encoding fails leaves no file behind.
        files = [("_labels.png", label_png_bytes(labels, self.colors))]
        if self.overlays:
            files.append(("_overlay.png", rgb_png_bytes(self.overlay(image, result))))
        if self.legends:
            files.append(("_legend.png", self.legend_png(labels)))
        if self.confidence:
            files += [
                ("_confidence.png", png16_bytes(conf.max_prob)),
                ("_entropy.png", png16_bytes(conf.entropy)),
                ("_confidence_heatmap.png", rgb_png_bytes(heatmap(conf.max_prob))),
            ]
        paths = [Path(f"{base}{suffix}") for suffix, _ in files]
        self._record.claim(paths)
        return [atomic_write_bytes(p, data, durable=False) for p, (_, data) in zip(paths, files)]

    def write_labelids(
        self, name: str, source: str | os.PathLike[str], labels: np.ndarray, lut: np.ndarray
    ) -> Path:
        """Write a Cityscapes benchmark file: ``<folder of name>/<city>_<seq>_<frame>_leftImg8bit
        _labelIds.png`` holding ``lut[labels]`` (labelIds), named after `source`.

        Raises:
            ValueError: `source` is not a Cityscapes file name.
        """
        from atrous.evaluation.cityscapes import cityscapes_prediction_name

        target = self.out_dir / Path(name).parent / cityscapes_prediction_name(source, "labelIds")
        return self._put(target, rgb_png_bytes(lut[labels]))

    def write_labels(self, name: str, labels: np.ndarray) -> Path:
        """Write only ``<name>_labels.png`` (a video frame's label map)."""
        return self._put(self.out_dir / f"{name}_labels.png", label_png_bytes(labels, self.colors))

    def claim(self, path: Path) -> None:
        """Let this writer replace `path` later (a video): see `PredictionWriter.write`.

        Raises:
            FileExistsError: `path` exists and was not written by a prediction.
        """
        self._record.claim([path])


class OverlayVideoWriter:
    """An overlay video written frame by frame, published under its name when closed.

    Frames go to a temporary file beside the target (OpenCV's ``VideoWriter``, MPEG-4 Part 2
    ``mp4v`` in an MP4 container: the codec every OpenCV build with FFmpeg writes); `close`
    renames it into place, also after an error, so the frames done are kept.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: float,
        size: tuple[int, int],
        writer: PredictionWriter,
    ) -> None:
        """
        Args:
            path: the video to write (``.mp4``).
            fps: frames per second of the input.
            size: ``(height, width)`` of every frame.
            writer: draws the overlays (opacity, colours) and guards `path` (see `claim`).

        Raises:
            FileExistsError: `path` exists and was not written by a prediction.
            OSError: OpenCV cannot open a video encoder for `path`.
        """
        import cv2

        self.path = Path(path)
        self.size = size
        self.frames = 0
        self._draw = writer
        writer.claim(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the container is chosen by the suffix
        self._tmp = temporary_name(self.path, suffix=f".tmp{self.path.suffix}")
        height, width = size
        self._video = cv2.VideoWriter(
            str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height)
        )
        if not self._video.isOpened():
            self._tmp.unlink(missing_ok=True)
            raise OSError(f"{self.path}: OpenCV cannot open an mp4v video encoder here")

    def add(self, frame: np.ndarray, result: Any) -> None:
        """Append the overlay of `result` on `frame` (uint8 RGB ``(H, W, 3)``)."""
        import cv2

        picture = self._draw.overlay(frame, result)
        self._video.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file and rename it into place; None (and nothing written) without frames."""
        self._video.release()
        if self.frames == 0:
            self._tmp.unlink(missing_ok=True)
            return None
        os.replace(self._tmp, self.path)
        return self.path

    def __enter__(self) -> OverlayVideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
