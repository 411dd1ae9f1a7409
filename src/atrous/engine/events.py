"""Training metrics: a per-run storage that hooks write into, and the writers that publish it.

The trainer owns one `EventStorage`; the step and the hooks put scalars into it, and periodic
writers turn the latest values into a console line, ``metrics.json`` (one JSON object per line,
detectron2's format) and TensorBoard event files.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import resource
import statistics
import sys
from collections import defaultdict
from typing import Any

import torch

from atrous.utils.file_io import atomic_write_text

__all__ = [
    "CommonMetricPrinter",
    "EventStorage",
    "EventWriter",
    "HistoryBuffer",
    "JSONWriter",
    "TensorboardWriter",
    "peak_memory_mb",
    "truncate_metrics",
]

logger = logging.getLogger(__name__)


class HistoryBuffer:
    """The values of one scalar with the iteration each was recorded at."""

    def __init__(self, max_length: int = 1_000_000) -> None:
        self.max_length = max_length
        self.values: list[tuple[float, int]] = []
        self._total = 0.0
        self._count = 0

    def update(self, value: float, iteration: int) -> None:
        if len(self.values) >= self.max_length:
            self.values.pop(0)
        self.values.append((value, iteration))
        self._total += value
        self._count += 1

    def latest(self) -> float:
        return self.values[-1][0]

    def median(self, window: int) -> float:
        return statistics.median(v for v, _ in self.values[-window:])

    def avg(self, window: int) -> float:
        recent = [v for v, _ in self.values[-window:]]
        return sum(recent) / len(recent)

    def global_avg(self) -> float:
        return self._total / max(1, self._count)


class EventStorage:
    """Scalars recorded during training, keyed by name.

    Args:
        start_iter: the iteration the run starts (or resumes) at.
    """

    def __init__(self, start_iter: int = 0) -> None:
        self.iter = start_iter
        self._history: dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: dict[str, bool] = {}
        self._latest: dict[str, tuple[float, int]] = {}

    def put_scalar(
        self, name: str, value: float | torch.Tensor, smoothing_hint: bool = True
    ) -> None:
        """Record `value` for the current iteration.

        Args:
            smoothing_hint: whether writers should show a median over a window (losses, times)
                rather than the latest value (LR, evaluation results).
        """
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        self._history[name].update(value, self.iter)
        self._latest[name] = (value, self.iter)
        self._smoothing_hints.setdefault(name, smoothing_hint)

    def put_scalars(self, *, smoothing_hint: bool = True, **kwargs: float) -> None:
        for name, value in kwargs.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint)

    def history(self, name: str) -> HistoryBuffer:
        if name not in self._history:
            raise KeyError(f"No history metric available for {name!r}")
        return self._history[name]

    def histories(self) -> dict[str, HistoryBuffer]:
        return dict(self._history)

    def latest(self) -> dict[str, tuple[float, int]]:
        """``{name: (latest value, iteration it was recorded at)}``."""
        return dict(self._latest)

    def latest_with_smoothing_hint(self, window: int = 20) -> dict[str, tuple[float, int]]:
        """Like `latest`, with smoothed scalars replaced by their median over `window` values."""
        out = {}
        for name, (value, it) in self._latest.items():
            if self._smoothing_hints[name]:
                value = self._history[name].median(window)
            out[name] = (value, it)
        return out


def peak_memory_mb() -> tuple[str, float]:
    """("max_mem", CUDA peak allocated MiB) on GPU, else ("max_rss", process peak RSS MiB)."""
    if torch.cuda.is_available():
        return "max_mem", torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return "max_rss", rss / (2**20 if sys.platform == "darwin" else 2**10)


class EventWriter:
    """Publishes the storage's latest values; `write` is called periodically."""

    def write(self, storage: EventStorage) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JSONWriter(EventWriter):
    """Appends one JSON object per iteration with new values to `path` (``metrics.json``).

    Lines are flushed after each write so an interrupted run keeps what it logged.

    Args:
        path: the file.
        window_size: median window of smoothed scalars.
        start_iter: for a resumed run, the iteration it resumes at: lines of that iteration and
            later (written by the interrupted run after its last checkpoint) are dropped first,
            so that every iteration appears once and the curves show one run.
    """

    def __init__(self, path: str, window_size: int = 20, *, start_iter: int | None = None) -> None:
        if start_iter is not None and os.path.exists(path):
            truncate_metrics(path, start_iter)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        self._window_size = window_size
        self._last_written = -1

    def write(self, storage: EventStorage) -> None:
        by_iter: dict[int, dict[str, Any]] = defaultdict(dict)
        for name, (value, it) in storage.latest_with_smoothing_hint(self._window_size).items():
            if it > self._last_written:
                by_iter[it][name] = value
        if not by_iter:
            return
        for it in sorted(by_iter):
            # NaN (e.g. the IoU of a class absent from the split) becomes null: strict JSON.
            record = {k: (v if math.isfinite(v) else None) for k, v in by_iter[it].items()}
            self._file.write(json.dumps({"iteration": it, **record}, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._last_written = max(by_iter)

    def close(self) -> None:
        self._file.close()


def truncate_metrics(path: str, start_iter: int) -> int:
    """Keep only the lines of ``metrics.json`` before `start_iter` (and a final evaluation at
    `start_iter`, which the resumed run does not repeat); returns how many were dropped.

    The file is replaced atomically, so a crash here leaves the old file. A line cut short by a
    crash while it was written (not valid JSON) is dropped too.
    """
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        iteration = record.get("iteration", -1)
        iteration = iteration if type(iteration) is int else -1
        # A completed run's final evaluation is recorded at MAX_ITER, the iteration a run
        # extending it resumes at: it measured the checkpoint's weights and is not repeated.
        final_evaluation = iteration == start_iter and "total_loss" not in record
        if iteration < start_iter or final_evaluation:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        logger.info(
            "Resuming at iteration %d: dropped %d lines of %s written after the last checkpoint",
            start_iter,
            dropped,
            path,
        )
    return dropped


class TensorboardWriter(EventWriter):
    """Writes every new scalar to TensorBoard event files in `log_dir`."""

    def __init__(self, log_dir: str, window_size: int = 20) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir)
        self._window_size = window_size
        self._last_written = -1

    def write(self, storage: EventStorage) -> None:
        new_last = self._last_written
        for name, (value, it) in storage.latest_with_smoothing_hint(self._window_size).items():
            if it > self._last_written:
                self._writer.add_scalar(name, value, it)
                new_last = max(new_last, it)
        self._last_written = new_last
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class CommonMetricPrinter(EventWriter):
    """Logs one line: ETA, iteration, losses, time per iteration, data time, LR, peak memory."""

    def __init__(self, max_iter: int, window_size: int = 20) -> None:
        self._max_iter = max_iter
        self._window_size = window_size
        self._logger = logging.getLogger("atrous.engine.trainer")

    def _eta(self, storage: EventStorage) -> str:
        try:
            per_iter = storage.history("time").median(1000)
        except KeyError:
            return "N/A"
        seconds = per_iter * (self._max_iter - storage.iter - 1)
        return str(datetime.timedelta(seconds=int(seconds)))

    def write(self, storage: EventStorage) -> None:
        it = storage.iter
        if it >= self._max_iter:
            return  # the final evaluation runs after the last step; there is no step to show
        w = self._window_size

        def fmt(name: str, spec: str) -> str | None:
            try:
                return format(storage.history(name).avg(w), spec)
            except KeyError:
                return None

        losses = "  ".join(
            f"{name}: {buf.median(w):.4g}"
            for name, buf in storage.histories().items()
            if "loss" in name
        )
        parts = [f"eta: {self._eta(storage)}", f"iter: {it}", losses]
        iter_time, data_time = fmt("time", ".4f"), fmt("data_time", ".4f")
        if iter_time is not None:
            parts.append(f"time: {iter_time}")
        if data_time is not None:
            parts.append(f"data_time: {data_time}")
        if "lr" in storage.histories():
            parts.append(f"lr: {storage.history('lr').latest():.5g}")
        mem_name, mem = peak_memory_mb()
        parts.append(f"{mem_name}: {mem:.0f}M")
        self._logger.info("  ".join(p for p in parts if p))
