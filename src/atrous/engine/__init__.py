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
from .trainer import SimpleTrainer, Trainer, TrainerBase, capture_rng_state, restore_rng_state

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
    "capture_rng_state",
    "default_argument_parser",
    "default_setup",
    "launch",
    "restore_rng_state",
    "seed_all_rng",
    "setup_logger",
]
