"""Training: the loop and its hooks, process launching, command-line flags and run set-up."""

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
    TrainingCurvePlotter,
)
from .launch import launch
from .trainer import SimpleTrainer, Trainer, TrainerBase

__all__ = [
    "EvalHook",
    "EventStorage",
    "HookBase",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "SimpleTrainer",
    "Trainer",
    "TrainerBase",
    "TrainingCurvePlotter",
    "add_train_arguments",
    "default_argument_parser",
    "default_setup",
    "launch",
    "seed_all_rng",
    "setup_logger",
]
