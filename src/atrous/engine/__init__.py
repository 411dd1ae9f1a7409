"""Training: the loop and its hooks (best checkpoint, early stopping, experiment tracking),
process launching, stop signals, flags and run set-up."""

from .best_checkpoint import BestCheckpointer, BestMetricState
from .class_weights import resolve_class_weights
from .defaults import (
    add_train_arguments,
    default_argument_parser,
    default_setup,
    seed_all_rng,
    setup_logger,
)
from .events import EventStorage
from .hooks import (
    EvalHook,
    HookBase,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
    PreemptionCheckpointer,
    TrainingCurvePlotter,
)
from .launch import launch
from .preemption import EXIT_PREEMPTED, StopSignals, TrainingPreempted
from .tracking import TrackingHook
from .trainer import SimpleTrainer, Trainer, TrainerBase

__all__ = [
    "EXIT_PREEMPTED",
    "BestCheckpointer",
    "BestMetricState",
    "EvalHook",
    "EventStorage",
    "HookBase",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "PreemptionCheckpointer",
    "SimpleTrainer",
    "StopSignals",
    "TrackingHook",
    "Trainer",
    "TrainerBase",
    "TrainingCurvePlotter",
    "TrainingPreempted",
    "add_train_arguments",
    "default_argument_parser",
    "default_setup",
    "launch",
    "resolve_class_weights",
    "seed_all_rng",
    "setup_logger",
]
