"""Video files as frames: what OpenCV's FFmpeg back end reads (MP4, MOV, AVI, MKV, WebM, ...).

`VideoReader` gives the frame rate and size up front and then the frames, in order, as RGB
arrays. A file that cannot be opened, and one whose decoding stops before the frame count its
header announces (truncated, damaged), raise `VideoReadError` naming the file; in the second
case only after the frames that could be decoded were given, so that they can be kept.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import DatasetError

__all__ = ["VIDEO_EXTENSIONS", "VideoReadError", "VideoReader", "is_video_file"]

VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
    ".mts", ".m2ts", ".3gp", ".ogv",
)  # fmt: skip


class VideoReadError(DatasetError):
    """A video file cannot be opened or decoded to its end."""


def is_video_file(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is named like a video (by its suffix)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


class VideoReader:
    """The frames of one video file.

    Attributes:
        path: the file.
        fps: frames per second from the container.
        height, width: size of every frame.
        frame_count: the number of frames the container announces, or None when it does not
            say (some containers only give a duration).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """
        Raises:
            VideoReadError: missing, not a regular file, not a video OpenCV can decode, or
                without a frame rate.
        """
        import cv2

        self.path = Path(path)
        try:
            mode = os.stat(self.path).st_mode
        except OSError as error:
            raise VideoReadError(f"{self.path}: cannot read it ({error.strerror})") from None
        if not stat.S_ISREG(mode):
            raise VideoReadError(f"{self.path} is not a regular file")
        self._capture = cv2.VideoCapture(str(self.path))
        if not self._capture.isOpened():
            raise VideoReadError(
                f"{self.path}: not a video OpenCV can open (corrupt, truncated, or a container "
                "or codec its FFmpeg lacks)"
            )
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS))
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None
        if not self.fps > 0 or self.width < 1 or self.height < 1:
            self.close()
            raise VideoReadError(
                f"{self.path}: the container gives no frame rate or frame size "
                f"(fps {self.fps}, {self.width}x{self.height})"
            )

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, frame)`` for every frame, frames as uint8 RGB ``(height, width, 3)``.

        Raises:
            VideoReadError: after the last frame decoded, when there are fewer than the header
                announced (more than one short: counts derived from a duration may be one off)
                or none at all.
        """
        import cv2

        index = 0
        try:
            while True:
                ok, frame = self._capture.read()
                if not ok:
                    break
                if frame.shape[:2] != (self.height, self.width):
                    raise VideoReadError(
                        f"{self.path}: frame {index} is {frame.shape[1]}x{frame.shape[0]}, the "
                        f"video {self.width}x{self.height}; frames of changing size are not "
                        "supported"
                    )
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                index += 1
        finally:
            self.close()
        if index == 0:
            raise VideoReadError(f"{self.path}: no frame could be decoded")
        if self.frame_count is not None and index < self.frame_count - 1:
            raise VideoReadError(
                f"{self.path}: decoding stopped after frame {index - 1}, but the file announces "
                f"{self.frame_count} frames: it is truncated or damaged"
            )

    def close(self) -> None:
        self._capture.release()
