"""Hooks: everything around the training step (LR schedule, checkpoints, evaluation, writers).

A hook sees the trainer through ``self.trainer`` (set when registered) and may act before and
after training and before and after each step. Hooks run in registration order.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from atrous.utils import comm
from atrous.utils.file_io import atomic_write

from .events import EventStorage, EventWriter
from .preemption import EXIT_PREEMPTED, StopSignals, TrainingPreempted, signal_name

__all__ = [
    "EvalHook",
    "HookBase",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "PreemptionCheckpointer",
    "TrainerState",
    "TrainingCurvePlotter",
    "flatten_results",
]

logger = logging.getLogger(__name__)


class TrainerState(Protocol):
    """What a hook reads from the trainer that runs it (`atrous.engine.trainer.TrainerBase`).

    Hooks depend on this shape, not on the trainer module, so the trainer can import the hooks.
    """

    iter: int
    start_iter: int
    max_iter: int
    storage: EventStorage
    # Set by a hook (early stopping) to end the run cleanly after the current step.
    stop_reason: str | None
    # What ended training early, seen by after_train (None for a finished run).
    exception: BaseException | None


class HookBase:
    """Base class of hooks; every method is a no-op by default."""

    trainer: TrainerState

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class IterationTimer(HookBase):
    """Records the wall time of each step as ``time`` and logs the total at the end."""

    def __init__(self, warmup_iter: int = 3) -> None:
        self._warmup_iter = warmup_iter
        self._step_start = 0.0
        self._train_start = 0.0
        self._timed_total = 0.0
        self._timed_count = 0

    def before_train(self) -> None:
        self._train_start = time.perf_counter()

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        elapsed = time.perf_counter() - self._step_start
        # The first steps pay for allocator and kernel warm-up; keep them out of the average.
        if self.trainer.iter - self.trainer.start_iter >= self._warmup_iter:
            self._timed_total += elapsed
            self._timed_count += 1
        self.trainer.storage.put_scalar("time", elapsed)

    def after_train(self) -> None:
        total = time.perf_counter() - self._train_start
        done = self.trainer.iter - self.trainer.start_iter
        if self._timed_count:
            logger.info(
                "Overall training speed: %d iterations in %.1f s (%.4f s / it)",
                self._timed_count,
                self._timed_total,
                self._timed_total / self._timed_count,
            )
        logger.info("Total training time: %.1f s (%d iterations)", total, done)


class LRScheduler(HookBase):
    """Records the LR used by the step as ``lr``, then advances the scheduler."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.scheduler = scheduler

    def _shown_group(self) -> dict:
        # The group with the most parameters carries the LR worth showing (biases may differ).
        return max(self.scheduler.optimizer.param_groups, key=lambda g: len(g["params"]))

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("lr", self._shown_group()["lr"], smoothing_hint=False)
        with warnings.catch_warnings():
            # With float16 the grad scaler skips the first steps; the schedules here are closed
            # forms of the iteration, so torch's "scheduler before optimizer" warning is moot.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()


class PeriodicCheckpointer(HookBase):
    """Saves a resumable checkpoint every `period` iterations and ``model_final`` at the end.

    Every rank takes part (each contributes its resume record, e.g. its RNG states), rank 0 writes.
    The checkpoint after iteration ``i`` is ``model_{i:07d}.pth`` and stores ``iteration=i``.

    Args:
        checkpointer: an `atrous.checkpoint.Checkpointer` with the model, optimizer and
            scheduler registered.
        period: iterations between checkpoints (0: only ``model_final``).
        max_iter: the last iteration + 1; reaching it writes ``model_final``.
        max_to_keep: keep only this many periodic checkpoints (0 keeps all; ``model_final`` is
            never deleted).
        extra_state: returns this rank's resumable state beyond what `checkpointer` handles
            (RNG states, data seed); gathered from all ranks into ``extra["ranks"]``.
    """

    def __init__(
        self,
        checkpointer: Any,
        *,
        period: int,
        max_iter: int,
        max_to_keep: int = 0,
        extra_state: Callable[[], dict] | None = None,
    ) -> None:
        self.checkpointer = checkpointer
        self.period = period
        self.max_iter = max_iter
        self.max_to_keep = max_to_keep
        self.extra_state = extra_state
        self.last_saved: int | None = None

    def save(self, name: str, iteration: int) -> None:
        states = comm.all_gather_object(self.extra_state() if self.extra_state else {})
        if comm.is_main_process():
            self.checkpointer.save(name, iteration=iteration, ranks=states)
        comm.synchronize()
        self.last_saved = iteration

    def save_iteration(self, iteration: int) -> str:
        """Save ``model_{iteration:07d}`` (all ranks) and rotate old ones; returns its file name.

        What the periodic schedule writes, and what a preempted run saves (unless the periodic
        checkpoint of that iteration exists already).
        """
        name = f"model_{iteration:07d}"
        if self.last_saved != iteration:
            self.save(name, iteration)
            if self.max_to_keep > 0 and comm.is_main_process():
                # Also rotates the files a resumed run's predecessor left.
                self.checkpointer.prune(self.max_to_keep, prefix="model")
        return f"{name}.pth"

    def after_step(self) -> None:
        it = self.trainer.iter
        if self.period > 0 and (it + 1) % self.period == 0:
            self.save_iteration(it)
        if it + 1 >= self.max_iter or self.trainer.stop_reason:
            # A run that ends early (early stopping) ends like a complete one.
            self.save("model_final", it)


class PreemptionCheckpointer(HookBase):
    """Stops every rank at the same iteration boundary once a stop signal arrived, after saving.

    Before each step (every `check_period` steps; all ranks must use the same value) the ranks
    all-reduce (MAX) their `StopSignals.requested` value, so a signal that reached only some of
    them (or reached them at different moments) stops all of them after the same iteration. Then
    `checkpointer` saves that iteration exactly like a periodic checkpoint (same file name and
    content, ``last_checkpoint`` updated), rank 0 logs one line, and `TrainingPreempted` is
    raised. The check runs before a step rather than after one so that every hook has finished
    the previous step; after the last step the run is complete and is not interrupted.

    Args:
        stop_signals: the `StopSignals` active around training.
        checkpointer: the run's `PeriodicCheckpointer`.
        check_period: iterations between checks (1: every iteration; one all-reduce of one
            integer, negligible next to a training step).
    """

    def __init__(
        self,
        stop_signals: StopSignals,
        checkpointer: PeriodicCheckpointer,
        *,
        check_period: int = 1,
    ) -> None:
        if check_period < 1:
            raise ValueError(f"check_period must be at least 1, got {check_period}.")
        self.stop_signals = stop_signals
        self.checkpointer = checkpointer
        self.check_period = check_period
        self._group: Any = None

    def before_train(self) -> None:
        if not comm.is_distributed():
            return
        import torch.distributed as dist

        # The flag travels over gloo even in an NCCL run: a CUDA all-reduce and reading its
        # result back would make the host wait for the GPU at every iteration.
        self._group = dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else None

    def _agreed_signal(self) -> int:
        signum = self.stop_signals.requested()
        if not comm.is_distributed():
            return signum
        import torch.distributed as dist

        flag = torch.tensor([signum], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag.item())

    def before_step(self) -> None:
        it = self.trainer.iter
        done = it - self.trainer.start_iter  # iterations completed by this run
        if done == 0 or done % self.check_period:
            return
        signum = self._agreed_signal()
        if not signum:
            return
        last = it - 1
        name = self.checkpointer.save_iteration(last)
        save_dir = getattr(self.checkpointer.checkpointer, "save_dir", None)
        path = os.path.join(save_dir, name) if save_dir else name
        # The writers' final flush then reports the last completed iteration.
        self.trainer.storage.iter = last
        received_at = self.stop_signals.received_at
        latency = f" {time.monotonic() - received_at:.1f} s after the signal" if received_at else ""
        sig = signal_name(signum)
        if comm.is_main_process():
            logger.warning(
                "Received %s at iteration %d: saved %s%s; resume with --resume (exit status %d)",
                sig,
                last,
                path,
                latency,
                EXIT_PREEMPTED,
            )
        raise TrainingPreempted(
            signal_name=sig, iteration=last, checkpoint=path if comm.is_main_process() else None
        )


def flatten_results(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"sem_seg": {"mIoU": 50}}`` -> ``{"sem_seg/mIoU": 50.0}`` (numbers only)."""
    out: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_results(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class EvalHook(HookBase):
    """Runs `eval_function` every `period` iterations and after the last one.

    The results (a nested dict of numbers, e.g. ``{"sem_seg": {"mIoU": ...}}``) go into the
    storage as ``sem_seg/mIoU`` etc., so the writers publish them.
    """

    def __init__(self, period: int, eval_function: Callable[[], Mapping[str, Any]]) -> None:
        self.period = period
        self.eval_function = eval_function
        self.latest_results: Mapping[str, Any] = {}

    def _do_eval(self) -> None:
        results = self.eval_function() or {}
        self.latest_results = results
        # NaN (a class absent from the split) is kept: JSON and TensorBoard show it as such.
        flat = flatten_results(results)
        self.trainer.storage.put_scalars(smoothing_hint=False, **flat)
        # Ranks that finish inference early must not race ahead into the next step.
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self.period > 0 and next_iter % self.period == 0 and next_iter != self.trainer.max_iter:
            self._do_eval()

    def after_train(self) -> None:
        # Only a completed run gets its final evaluation; a crashed one stops where it crashed.
        if self.trainer.iter >= self.trainer.max_iter:
            self._do_eval()


class PeriodicWriter(HookBase):
    """Calls every writer every `period` iterations and at the end of training."""

    def __init__(self, writers: Sequence[EventWriter], period: int = 20) -> None:
        self.writers = list(writers)
        self.period = period

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it == self.trainer.max_iter - 1:
            for writer in self.writers:
                writer.write(self.trainer.storage)

    def after_train(self) -> None:
        for writer in self.writers:
            # The final evaluation's results arrive after the last step's write.
            writer.write(self.trainer.storage)
            writer.close()


class TrainingCurvePlotter(HookBase):
    """Plots loss, LR and mIoU from ``metrics.json`` into a PNG when training ends."""

    def __init__(self, metrics_path: str, output_path: str) -> None:
        self.metrics_path = metrics_path
        self.output_path = output_path

    def after_train(self) -> None:
        if not comm.is_main_process() or not os.path.exists(self.metrics_path):
            return
        try:
            plot_training_curves(self.metrics_path, self.output_path)
        except Exception as error:  # a plot must never turn a finished run into a failure
            logger.warning("Could not plot training curves: %s", error)


def plot_training_curves(metrics_path: str, output_path: str) -> None:
    """Draw total loss, LR and every ``*/mIoU`` series of a metrics.json file into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    with open(metrics_path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            it = record.get("iteration")
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)):
                    series.setdefault(key, []).append((it, value))
    panels = [
        ("loss", [k for k in ("total_loss",) if k in series] or [k for k in series if "loss" in k]),
        ("learning rate", [k for k in ("lr",) if k in series]),
        ("mIoU", [k for k in series if k.endswith("mIoU")]),
    ]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            # A resumed run appends; keep the latest value per iteration.
            points = dict(series[key])
            xs = sorted(points)
            ax.plot(xs, [points[x] for x in xs], marker="o" if len(xs) < 30 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if len(keys) > 1 or title == "mIoU":
            ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(output_path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
