"""Training: the loop and its hooks, process launching, stop signals, flags and run set-up."""

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
from .trainer import SimpleTrainer, Trainer, TrainerBase

__all__ = [
    "EXIT_PREEMPTED",
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
