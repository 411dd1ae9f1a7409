"""Which evaluation a training folder's ``model_best.pth`` holds, and which weights a tool took.

Training with SOLVER.BEST_CHECKPOINT writes ``model_best.pth`` (weights only) and, beside it,
``model_best.json``: ``{"metric", "mode", "value", "iteration", "file"}``. Tools that take
weights from a training folder (export, quickstart, bundles) read the record, not the weights,
to say what they took.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["BEST_FILE", "BEST_RECORD", "describe_weights", "read_best_record"]

BEST_FILE = "model_best.pth"
BEST_RECORD = "model_best.json"


def read_best_record(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``model_best.json`` of a training output folder, or None (absent or unreadable)."""
    try:
        with open(os.path.join(folder, BEST_RECORD), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not {"metric", "value", "iteration"} <= record.keys():
        return None
    return record


def _best(record: dict[str, Any]) -> str:
    return f"{record['metric']} {record['value']:.4g} at iteration {record['iteration']}"


def describe_weights(path: str | os.PathLike[str]) -> str:
    """One phrase on which weights `path` is, e.g. ``output/model_best.pth (the best
    evaluation of its run: sem_seg/mIoU 71.2 at iteration 7999)``.

    For the final weights of a run that also kept a best checkpoint, it says where the best is.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    record = read_best_record(folder or ".")
    if record is None:
        return path
    if name == BEST_FILE:
        return f"{path} (the best evaluation of its run: {_best(record)})"
    if name.startswith("model_final"):
        return f"{path} (the final weights; the best evaluation, {_best(record)}, is {BEST_FILE})"
    return path
