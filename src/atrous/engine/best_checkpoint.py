"""The best checkpoint and early stopping: both follow one evaluation metric.

`BestMetricState` is what survives a restart: the best value, the iteration it came from and the
number of evaluations since the last improvement. The trainer registers it with its
`Checkpointer` (under ``"best_metric"``), so every periodic, final and preemption checkpoint
holds it and ``--resume`` restores it exactly. `BestCheckpointer` is the hook that reads each
evaluation's value, writes ``model_best.pth`` (weights only, with a ``best`` record) and
``model_best.json`` when it improves, and asks the loop to stop once the patience is used up.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from atrous.checkpoint.best import BEST_FILE, BEST_RECORD
from atrous.utils import comm
from atrous.utils.file_io import atomic_write_json

from .hooks import HookBase

__all__ = ["BestCheckpointer", "BestMetricState"]

logger = logging.getLogger(__name__)


class BestMetricState:
    """The best value of one metric so far and the evaluations since it last improved.

    Args:
        metric: the flattened result key, e.g. ``"sem_seg/mIoU"``.
        mode: ``"max"`` or ``"min"``.
        min_delta: an evaluation counts as an improvement for early stopping only when it beats
            the reference value by more than this (the best checkpoint follows any improvement).
    """

    def __init__(self, metric: str, mode: str = "max", min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.metric = metric
        self.mode = mode
        self.min_delta = float(min_delta)
        self.best_value: float | None = None
        self.best_iteration: int | None = None
        # The value improvements are measured against for early stopping (moves only by more
        # than min_delta, so many tiny gains do not keep a run alive forever).
        self.reference: float | None = None
        self.evaluations_without_improvement = 0
        self.last_evaluation = -1

    def _better(self, value: float, than: float | None, margin: float = 0.0) -> bool:
        if not math.isfinite(value):
            return False
        if than is None:
            return True
        return value > than + margin if self.mode == "max" else value < than - margin

    def update(self, value: float, iteration: int) -> bool:
        """Record the evaluation at `iteration`; True when it is a new best. NaN never is."""
        self.last_evaluation = iteration
        improved = self._better(value, self.best_value)
        if improved:
            self.best_value, self.best_iteration = float(value), iteration
        if self._better(value, self.reference, self.min_delta):
            self.reference = float(value)
            self.evaluations_without_improvement = 0
        else:
            self.evaluations_without_improvement += 1
        return improved

    def exhausted(self, patience: int) -> bool:
        """Whether `patience` evaluations in a row brought no improvement (never for 0)."""
        return patience > 0 and self.evaluations_without_improvement >= patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "mode": self.mode,
            "best_value": self.best_value,
            "best_iteration": self.best_iteration,
            "reference": self.reference,
            "evaluations_without_improvement": self.evaluations_without_improvement,
            "last_evaluation": self.last_evaluation,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a saved state; one that followed another metric or mode is not taken over."""
        if not isinstance(state, Mapping):
            raise TypeError(f"a best-metric state is a dict, not {type(state).__name__}")
        if state.get("metric") != self.metric or state.get("mode") != self.mode:
            logger.warning(
                "The checkpoint followed %s (%s), this run follows %s (%s): the best value and "
                "the early-stopping count start afresh.",
                state.get("metric"),
                state.get("mode"),
                self.metric,
                self.mode,
            )
            return
        best, reference = state.get("best_value"), state.get("reference")
        count, last = state.get("evaluations_without_improvement"), state.get("last_evaluation")
        best_iteration = state.get("best_iteration")
        numbers_ok = all(v is None or isinstance(v, float | int) for v in (best, reference))
        ints_ok = all(type(v) is int for v in (count, last)) and (
            best_iteration is None or type(best_iteration) is int
        )
        if not (numbers_ok and ints_ok):
            raise TypeError(f"malformed best-metric state {dict(state)!r:.200}")
        self.best_value = None if best is None else float(best)
        self.best_iteration = best_iteration
        self.reference = None if reference is None else float(reference)
        self.evaluations_without_improvement = count
        self.last_evaluation = last


class BestCheckpointer(HookBase):
    """After each evaluation: keep the best weights, count evaluations without improvement.

    Registered after `EvalHook` and before `PeriodicCheckpointer`, so that a checkpoint written
    at an evaluation's iteration already holds that evaluation in `state`. Every rank updates its
    `state` from the same (all-reduced) results and reaches the same decision; rank 0 writes.

    Args:
        state: the `BestMetricState`, also registered with the trainer's checkpointer.
        checkpointer: a `Checkpointer` of the model alone, saving into the output folder (the
            best file holds weights only: it is for inference and export, not for resuming).
        patience: stop after this many evaluations without improvement (0: never).
        save_final: saves ``model_final`` again (all ranks call it); called after the final
            evaluation, which runs after ``model_final`` was written, so that the final
            checkpoint holds it and a run extended with a larger SOLVER.MAX_ITER goes on from
            the right best value.
    """

    def __init__(
        self,
        state: BestMetricState,
        checkpointer: Any,
        *,
        patience: int = 0,
        save_final: Callable[[], None] | None = None,
    ) -> None:
        self.state = state
        self.checkpointer = checkpointer
        self.patience = patience
        self.save_final = save_final
        self._warned_missing = False

    def _new_value(self) -> tuple[float, int] | None:
        """(value, iteration) of an evaluation not seen yet, or None."""
        latest = self.trainer.storage.latest()
        entry = latest.get(self.state.metric)
        if entry is None:
            evaluated = [k for k, (_, it) in latest.items() if it == self.trainer.storage.iter]
            if any("/" in k for k in evaluated) and not self._warned_missing:
                self._warned_missing = True
                shown = ", ".join(sorted(k for k in evaluated if "/" in k)[:12])
                logger.warning(
                    "SOLVER.BEST_CHECKPOINT.METRIC %r is not among the evaluation results (%s): "
                    "no best checkpoint is kept and early stopping never triggers.",
                    self.state.metric,
                    shown,
                )
            return None
        value, iteration = entry
        if iteration <= self.state.last_evaluation:
            return None
        return value, iteration

    def _process(self, *, final: bool) -> None:
        new = self._new_value()
        if new is None:
            return
        value, iteration = new
        previous = (self.state.best_value, self.state.best_iteration)
        if self.state.update(value, iteration):
            # The final evaluation is recorded at MAX_ITER (as in metrics.json) but measures the
            # weights of the last iteration, MAX_ITER - 1, which is what model_final.pth says.
            if final:
                self.state.best_iteration = iteration = min(iteration, self.trainer.max_iter - 1)
            self._save_best(value, iteration, previous)
        if final or not self.state.exhausted(self.patience):
            return
        reason = (
            f"early stopping at iteration {iteration}: {self.state.metric} has not improved "
            f"for {self.state.evaluations_without_improvement} evaluations "
            f"(SOLVER.EARLY_STOP.PATIENCE {self.patience}); the best, "
            f"{self.state.best_value:.4g} at iteration {self.state.best_iteration}, is in "
            f"{BEST_FILE}"
            if self.state.best_value is not None
            else f"early stopping at iteration {iteration}: {self.state.metric} was never finite "
            f"in {self.state.evaluations_without_improvement} evaluations"
        )
        self.trainer.stop_reason = reason

    def _save_best(self, value: float, iteration: int, previous: tuple[Any, Any]) -> None:
        record = {
            "metric": self.state.metric,
            "mode": self.state.mode,
            "value": float(value),
            "iteration": iteration,
            "file": BEST_FILE,
        }
        # Not tagged as last_checkpoint: a resumed run continues from the latest full state.
        self.checkpointer.save(BEST_FILE, tag_last=False, best=record)
        if comm.is_main_process() and self.checkpointer.save_dir is not None:
            atomic_write_json(os.path.join(self.checkpointer.save_dir, BEST_RECORD), record)
            was = (
                f" (was {previous[0]:.4g} at iteration {previous[1]})"
                if previous[0] is not None
                else ""
            )
            logger.info(
                "New best %s %.4g at iteration %d%s: saved %s",
                self.state.metric,
                value,
                iteration,
                was,
                BEST_FILE,
            )

    def after_step(self) -> None:
        self._process(final=False)

    def after_train(self) -> None:
        # The final evaluation (run by EvalHook.after_train) may still be the best one.
        if self.trainer.iter < self.trainer.max_iter:
            return
        seen = self.state.last_evaluation
        self._process(final=True)
        if self.state.last_evaluation != seen and self.save_final is not None:
            self.save_final()
