"""Exceptions raised while reading, writing or downloading checkpoints.

Every message names the file or URL involved and says what to do about it, because these errors
usually surface far from the code that chose the path (a YAML file, a command line).
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ChecksumMismatchError",
    "CorruptCheckpointError",
    "DownloadError",
    "UnsafePickleError",
    "redo_advice",
]


class CheckpointError(RuntimeError):
    """Base class of every checkpoint problem raised by :mod:`atrous.checkpoint`."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (also a :class:`FileNotFoundError`)."""


class CorruptCheckpointError(CheckpointError):
    """The file exists but cannot be decoded: truncated, corrupt, or not a checkpoint."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for something other than arrays and plain containers; nothing was run."""


class DownloadError(CheckpointError):
    """A download failed (HTTP error, network error, interrupted transfer); nothing was cached."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file does not match the checksum embedded in its name; it was deleted."""


class BundleError(CheckpointError):
    """A model bundle folder is incomplete, was edited after export, or contradicts itself."""


# Names a checkpoint file has; only such a file is worth deleting and fetching again.
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pkl", ".pickle", ".safetensors", ".bin", ".ckpt")


def redo_advice(path: object) -> str:
    """What to do about a damaged file, for the end of a message.

    A file named like a checkpoint is one that was copied or downloaded badly: delete it and
    fetch it again. Any other file (``/etc/passwd`` named where a checkpoint belongs) is not to
    be deleted: the path is wrong.
    """
    if str(path).lower().endswith(_CHECKPOINT_SUFFIXES):
        return "Delete it and download or copy it again."
    return "Check the path: it does not name a checkpoint file (.pth, .pkl, .safetensors)."
