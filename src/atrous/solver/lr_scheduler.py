"""Iteration-based learning-rate schedules with warmup, matching detectron2.

Every scheduler here is stepped once per iteration (PyTorch's ``last_epoch`` counts iterations)
and computes the LR in closed form from the iteration, so a resumed run reproduces the exact
values of an uninterrupted one.

* `WarmupPolyLR` reproduces projects/DeepLab's scheduler, including its constant ending.
* `WarmupMultiStepLR` and `WarmupCosineLR` reproduce what detectron2's `build_lr_scheduler`
  builds for those names (fvcore parameter schedules wrapped in a warmup, applied as a multiplier
  of each group's base LR).

A scheduler's saved state is its position (``last_epoch``) and the groups' base LRs, as in
detectron2's ``LRMultiplier``; the shape of the schedule (length, warmup, power, steps) always
comes from the config it is rebuilt from. So a run resumed with a larger SOLVER.MAX_ITER follows
the poly curve of the new length, and loading a state sets the optimizer's LRs to the schedule's
value at that position (the value the saving run used when nothing changed).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
)
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "LRMultiplier",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "WarmupParamScheduler",
    "WarmupPolyLR",
    "build_lr_scheduler",
    "warmup_factor_at_iter",
]

logger = logging.getLogger(__name__)

_WARMUP_METHODS = ("linear", "constant")


def warmup_factor_at_iter(
    method: str, iteration: int, warmup_iters: int, warmup_factor: float
) -> float:
    """The LR multiplier of a warmup at `iteration` (1.0 once the warmup is over).

    Args:
        method: "linear" (ramp from `warmup_factor` to 1) or "constant" (`warmup_factor` until the
            end of the warmup).
        iteration: the current iteration, starting at 0.
        warmup_iters: length of the warmup in iterations.
        warmup_factor: multiplier at iteration 0.
    """
    if iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = iteration / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(f"Unknown SOLVER.WARMUP_METHOD {method!r}; use one of {_WARMUP_METHODS}.")


class _PositionState:
    """State dict of an iteration-based scheduler: its position and base LRs, nothing else.

    torch's default state holds every attribute, so a resumed run would take the schedule's
    length from the checkpoint instead of its config, and a file could set any attribute.
    """

    base_lrs: list[float]
    last_epoch: int
    optimizer: torch.optim.Optimizer

    def state_dict(self) -> dict:
        return {
            "base_lrs": list(self.base_lrs),
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,  # type: ignore[attr-defined]
            "_last_lr": list(self._last_lr),  # type: ignore[attr-defined]
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the position and base LRs, then set each group's LR from the schedule.

        Raises:
            ValueError: the state is not one this scheduler saved (missing entries, wrong types,
                a negative position, a base LR per group that does not match the optimizer).
        """
        if not isinstance(state_dict, dict):
            raise ValueError(f"a scheduler state is a dict, got a {type(state_dict).__name__}")
        last_epoch = state_dict.get("last_epoch")
        if type(last_epoch) is not int or last_epoch < 0:
            raise ValueError(f"'last_epoch' must be a non-negative integer, got {last_epoch!r:.60}")
        base_lrs = state_dict.get("base_lrs")
        groups = len(self.optimizer.param_groups)
        if (
            not isinstance(base_lrs, list | tuple)
            or len(base_lrs) != groups
            or not all(type(v) in (int, float) and math.isfinite(v) and v >= 0 for v in base_lrs)
        ):
            raise ValueError(
                f"'base_lrs' must be {groups} finite non-negative numbers, got {base_lrs!r:.80}"
            )
        self.last_epoch = last_epoch
        self.base_lrs = [float(v) for v in base_lrs]
        step_count = state_dict.get("_step_count")
        if type(step_count) is not int:
            step_count = last_epoch + 1
        self._step_count = step_count  # type: ignore[attr-defined]
        # The LR of the next iteration under this config's schedule (identical to the saved one
        # when the config is unchanged, the new curve's value when SOLVER.MAX_ITER grew).
        lrs = self.get_lr()  # type: ignore[attr-defined]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = list(lrs)  # type: ignore[attr-defined]


class WarmupPolyLR(_PositionState, LRScheduler):
    """Poly decay ``(1 - it / max_iters) ** power`` after a warmup, as in projects/DeepLab.

    ``lr = base_lr * warmup(it) * (1 - it / max_iters) ** power``. When `constant_ending` is
    positive, once the warmup is over and the poly factor drops below `constant_ending`, the LR
    stays at ``base_lr * constant_ending``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        max_iters: int,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        power: float = 0.9,
        constant_ending: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if max_iters <= 0:
            raise ValueError(f"SOLVER.MAX_ITER must be positive, got {max_iters}.")
        if warmup_method not in _WARMUP_METHODS:
            raise ValueError(
                f"Unknown SOLVER.WARMUP_METHOD {warmup_method!r}; use one of {_WARMUP_METHODS}."
            )
        self.max_iters = max_iters
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        self.power = power
        self.constant_ending = constant_ending
        super().__init__(optimizer, last_epoch)

    def factor_at(self, iteration: int) -> float:
        """The multiplier of the base LR at `iteration`."""
        warmup = warmup_factor_at_iter(
            self.warmup_method, iteration, self.warmup_iters, self.warmup_factor
        )
        # Past the end (a run resumed with a smaller SOLVER.MAX_ITER) the curve stays at 0
        # rather than taking a fractional power of a negative number.
        poly = math.pow(max(0.0, 1.0 - iteration / self.max_iters), self.power)
        # The original only switches to the constant ending after the warmup.
        if self.constant_ending > 0 and warmup == 1.0 and poly < self.constant_ending:
            return self.constant_ending
        return warmup * poly

    def get_lr(self) -> list[float]:
        factor = self.factor_at(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class WarmupParamScheduler(CompositeParamScheduler):
    """A warmup phase followed by `scheduler`, as detectron2 builds it.

    Args:
        scheduler: the main schedule, a function of the training progress in [0, 1).
        warmup_factor: multiplier at the start, relative to ``scheduler(0)``.
        warmup_length: fraction of the training spent warming up.
        warmup_method: "linear" or "constant".
        rescale_interval: when True the main schedule restarts after the warmup (sees progress
            rescaled to [0, 1)); when False it sees the overall progress.
    """

    def __init__(
        self,
        scheduler: ParamScheduler,
        *,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
        rescale_interval: bool = False,
    ) -> None:
        end_value = scheduler(0.0) if rescale_interval else scheduler(warmup_length)
        start_value = warmup_factor * scheduler(0.0)
        if warmup_method == "constant":
            warmup: ParamScheduler = ConstantParamScheduler(start_value)
        elif warmup_method == "linear":
            warmup = LinearParamScheduler(start_value, end_value)
        else:
            raise ValueError(
                f"Unknown SOLVER.WARMUP_METHOD {warmup_method!r}; use one of {_WARMUP_METHODS}."
            )
        super().__init__(
            [warmup, scheduler],
            interval_scaling=["rescaled", "rescaled" if rescale_interval else "fixed"],
            lengths=[warmup_length, 1 - warmup_length],
        )


class LRMultiplier(_PositionState, LRScheduler):
    """Sets every group's LR to ``base_lr * multiplier(iteration / max_iter)``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        multiplier: ParamScheduler,
        max_iter: int,
        last_epoch: int = -1,
    ) -> None:
        if max_iter <= 0:
            raise ValueError(f"SOLVER.MAX_ITER must be positive, got {max_iter}.")
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        # fvcore's schedules are defined on [0, 1]; past the end the last value holds.
        factor = self._multiplier(min(self.last_epoch / self._max_iter, 1.0))
        return [base_lr * factor for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


def WarmupMultiStepLR(
    optimizer: torch.optim.Optimizer,
    *,
    max_iter: int,
    steps: Sequence[int],
    gamma: float = 0.1,
    warmup_factor: float = 0.001,
    warmup_iters: int = 1000,
    warmup_method: str = "linear",
    rescale_interval: bool = False,
) -> LRMultiplier:
    """LR multiplied by `gamma` at each of `steps`, after a warmup (detectron2's default)."""
    kept = [s for s in steps if s <= max_iter]
    if len(kept) != len(steps):
        logger.warning(
            "SOLVER.STEPS contains values larger than SOLVER.MAX_ITER (%d); they are ignored.",
            max_iter,
        )
    sched = MultiStepParamScheduler(
        values=[gamma**k for k in range(len(kept) + 1)], milestones=kept, num_updates=max_iter
    )
    return _with_warmup(
        optimizer, sched, max_iter, warmup_factor, warmup_iters, warmup_method, rescale_interval
    )


def WarmupCosineLR(
    optimizer: torch.optim.Optimizer,
    *,
    max_iter: int,
    end_factor: float = 0.0,
    warmup_factor: float = 0.001,
    warmup_iters: int = 1000,
    warmup_method: str = "linear",
    rescale_interval: bool = False,
) -> LRMultiplier:
    """Half-cosine decay from the base LR to ``base_lr * end_factor``, after a warmup."""
    if not 0.0 <= end_factor <= 1.0:
        raise ValueError(
            f"SOLVER.BASE_LR_END / SOLVER.BASE_LR must lie in [0, 1], got {end_factor}."
        )
    sched = CosineParamScheduler(1.0, end_factor)
    return _with_warmup(
        optimizer, sched, max_iter, warmup_factor, warmup_iters, warmup_method, rescale_interval
    )


def _with_warmup(
    optimizer: torch.optim.Optimizer,
    sched: ParamScheduler,
    max_iter: int,
    warmup_factor: float,
    warmup_iters: int,
    warmup_method: str,
    rescale_interval: bool,
) -> LRMultiplier:
    if max_iter <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be positive, got {max_iter}.")
    warm = WarmupParamScheduler(
        sched,
        warmup_factor=warmup_factor,
        warmup_length=min(warmup_iters / max_iter, 1.0),
        warmup_method=warmup_method,
        rescale_interval=rescale_interval,
    )
    return LRMultiplier(optimizer, multiplier=warm, max_iter=max_iter)


_NAMES = ("WarmupPolyLR", "WarmupMultiStepLR", "WarmupCosineLR")


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """Build the scheduler named by ``cfg.SOLVER.LR_SCHEDULER_NAME``."""
    s = cfg.SOLVER
    name = s.LR_SCHEDULER_NAME
    common = {
        "warmup_factor": s.WARMUP_FACTOR,
        "warmup_iters": s.WARMUP_ITERS,
        "warmup_method": s.WARMUP_METHOD,
    }
    if name == "WarmupPolyLR":
        return WarmupPolyLR(
            optimizer,
            max_iters=s.MAX_ITER,
            power=s.POLY_LR_POWER,
            constant_ending=s.POLY_LR_CONSTANT_ENDING,
            **common,
        )
    if name == "WarmupMultiStepLR":
        return WarmupMultiStepLR(
            optimizer,
            max_iter=s.MAX_ITER,
            steps=list(s.STEPS),
            gamma=s.GAMMA,
            rescale_interval=s.RESCALE_INTERVAL,
            **common,
        )
    if name == "WarmupCosineLR":
        return WarmupCosineLR(
            optimizer,
            max_iter=s.MAX_ITER,
            end_factor=s.BASE_LR_END / s.BASE_LR,
            rescale_interval=s.RESCALE_INTERVAL,
            **common,
        )
    raise ValueError(f"Unknown SOLVER.LR_SCHEDULER_NAME {name!r}; use one of {_NAMES}.")
