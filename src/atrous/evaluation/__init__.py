"""Evaluation: detectron2's semantic segmentation metrics, the official Cityscapes script, reports.

Heavy pieces (the Cityscapes evaluator, the inference loop) are imported on first use so that
importing the metrics stays cheap.
"""

from __future__ import annotations

from typing import Any

from .evaluator import DatasetEvaluator, DatasetEvaluators
from .metadata import resolve_metadata
from .sem_seg import SemSegEvaluator, mask_to_boundary, metrics_from_confusion

__all__ = [
    "CityscapesSemSegEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "SemSegEvaluator",
    "build_evaluator",
    "evaluate_datasets",
    "inference_on_dataset",
    "mask_to_boundary",
    "metrics_from_confusion",
    "resolve_metadata",
]

_LAZY = {
    "CityscapesSemSegEvaluator": "cityscapes",
    "build_evaluator": "inference",
    "evaluate_datasets": "inference",
    "inference_on_dataset": "inference",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
