"""Crash-safe file replacement: write elsewhere, make it durable, then rename into place."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "fsync_dir"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry so a completed rename survives a power loss.

    Platforms that cannot open a directory (Windows) skip this silently.
    """
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Create or replace `path` so that readers see either the old file or the complete new one.

    The data goes to a uniquely named temporary file in the same directory (so the final
    ``os.replace`` is a rename within one file system), is flushed and fsynced, renamed over
    `path`, and the directory is fsynced. If `write` raises, the temporary file is removed and
    `path` is untouched.

    Args:
        path: destination file.
        write: called with the open temporary file (binary mode).

    Returns:
        `path` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)
    return path
