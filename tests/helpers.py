"""Code shared by test modules of several packages (fixtures live in the conftest files)."""

from __future__ import annotations

import os
from pathlib import Path

# The ways a run's `last_checkpoint` record can be unusable, as `spoil_last_checkpoint` makes them.
UNUSABLE_LAST_CHECKPOINT = ("missing", "empty", "fifo", "folder", "passwd", "huge")


def spoil_last_checkpoint(folder: Path, how: str) -> None:
    """Replace ``folder/last_checkpoint`` by an unusable record of kind `how`: missing, empty, a
    FIFO, a folder, a link to /etc/passwd, or megabyte-sized text."""
    last = folder / "last_checkpoint"
    last.unlink()
    if how == "empty":
        last.write_text("")
    elif how == "fifo":
        os.mkfifo(last)
    elif how == "folder":
        last.mkdir()
    elif how == "passwd":
        last.symlink_to("/etc/passwd")
    elif how == "huge":
        last.write_text("model_final.pth" + " " * 5000 + "x" * 100_000)
    elif how != "missing":
        raise ValueError(f"unknown kind of unusable record {how!r}")
