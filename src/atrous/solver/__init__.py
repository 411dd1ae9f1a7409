"""Optimizers, gradient clipping and learning-rate schedules."""

from .lr_scheduler import (
    LRMultiplier,
    WarmupCosineLR,
    WarmupMultiStepLR,
    WarmupParamScheduler,
    WarmupPolyLR,
    build_lr_scheduler,
    warmup_factor_at_iter,
)
from .optimizer import (
    GradientClipper,
    OptimizerCoverageError,
    build_gradient_clipper,
    build_optimizer,
    check_optimizer_covers,
    get_default_optimizer_params,
    solver_values_in_use,
)

__all__ = [
    "GradientClipper",
    "LRMultiplier",
    "OptimizerCoverageError",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "WarmupParamScheduler",
    "WarmupPolyLR",
    "build_gradient_clipper",
    "build_lr_scheduler",
    "build_optimizer",
    "check_optimizer_covers",
    "get_default_optimizer_params",
    "solver_values_in_use",
    "warmup_factor_at_iter",
]
