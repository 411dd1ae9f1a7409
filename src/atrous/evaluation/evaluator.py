"""The evaluator protocol (reset / process / evaluate) and a combinator for several evaluators."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["DatasetEvaluator", "DatasetEvaluators"]


class DatasetEvaluator:
    """Accumulates statistics over a dataset's predictions and turns them into metrics.

    Call `reset()` before a pass, `process(inputs, outputs)` for every batch the model produced,
    and `evaluate()` once at the end. In a multi-process run every rank must call `evaluate()`,
    because evaluators synchronise their state there.
    """

    def reset(self) -> None:
        """Forget everything accumulated so far."""

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        """Accumulate one batch.

        Args:
            inputs: the model's inputs, one dict per image (``file_name``, ``height``, ``width``,
                and for semantic segmentation ``sem_seg_file_name``).
            outputs: the model's outputs, one dict per image with ``"sem_seg"`` of shape
                ``(C, H, W)`` (logits or probabilities at the original image size).
        """

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Metrics grouped by task, e.g. ``{"sem_seg": {"mIoU": 75.1, ...}}``."""
        return {}


class DatasetEvaluators(DatasetEvaluator):
    """Runs several evaluators over the same predictions and merges their results.

    Results of the same task (e.g. ``"sem_seg"``) are merged into one dict; a metric name that two
    evaluators both report is an error, since one would silently hide the other.
    """

    def __init__(self, evaluators: Sequence[DatasetEvaluator]) -> None:
        super().__init__()
        self.evaluators = list(evaluators)

    def reset(self) -> None:
        for evaluator in self.evaluators:
            evaluator.reset()

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for evaluator in self.evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> dict[str, dict[str, float]]:
        results: dict[str, dict[str, float]] = {}
        for evaluator in self.evaluators:
            for task, metrics in (evaluator.evaluate() or {}).items():
                merged = results.setdefault(task, {})
                clash = set(merged) & set(metrics)
                if clash:
                    raise KeyError(
                        f"{type(evaluator).__name__} reports {sorted(clash)} under '{task}', "
                        "which another evaluator already reported"
                    )
                merged.update(metrics)
        return results
