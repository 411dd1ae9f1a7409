"""Inference: the `Predictor`, test-time augmentation, sliding windows and visualisation.

Sub-modules are imported on first use, so that drawing helpers do not pull in the model code.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Confidence",
    "Predictor",
    "SegmentationResult",
    "SemanticSegmentorWithTTA",
    "SlidingWindowInference",
    "build_inference_model",
    "confidence_from_logits",
]

_LAZY = {
    "Confidence": "confidence",
    "confidence_from_logits": "confidence",
    "Predictor": "predictor",
    "SegmentationResult": "predictor",
    "build_inference_model": "predictor",
    "SemanticSegmentorWithTTA": "tta",
    "SlidingWindowInference": "sliding_window",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
