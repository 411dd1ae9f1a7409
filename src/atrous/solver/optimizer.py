"""SGD with detectron2's per-parameter hyper-parameters, and gradient clipping.

Parameter groups follow detectron2's `get_default_optimizer_params`: parameters of normalisation
layers get ``SOLVER.WEIGHT_DECAY_NORM``; biases get ``BASE_LR * SOLVER.BIAS_LR_FACTOR`` and
``SOLVER.WEIGHT_DECAY_BIAS`` (the bias rule wins for a norm layer's bias when set); groups with
equal hyper-parameters are merged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = [
    "NORM_MODULE_TYPES",
    "GradientClipper",
    "OptimizerCoverageError",
    "build_gradient_clipper",
    "build_optimizer",
    "check_optimizer_covers",
    "get_default_optimizer_params",
    "solver_values_in_use",
]

NORM_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def get_default_optimizer_params(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float | None = None,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: float | None = None,
) -> list[dict]:
    """Parameter groups for an optimizer, one per distinct (lr, weight_decay).

    Args:
        model: the model; frozen parameters (``requires_grad=False``) are left out.
        base_lr: LR of ordinary parameters.
        weight_decay: weight decay of ordinary parameters.
        weight_decay_norm: weight decay of normalisation layers' parameters (None: same as
            `weight_decay`).
        bias_lr_factor: LR multiplier of parameters named ``bias``.
        weight_decay_bias: weight decay of parameters named ``bias`` (None: no special rule).

    Returns:
        A list of ``{"params": [...], "lr": float, "weight_decay": float}``, in the order
        parameters are first met, each parameter exactly once.
    """
    bias_overrides: dict[str, float] = {}
    if bias_lr_factor != 1.0:
        bias_overrides["lr"] = base_lr * bias_lr_factor
    if weight_decay_bias is not None:
        bias_overrides["weight_decay"] = weight_decay_bias

    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, wd = base_lr, weight_decay
            if isinstance(module, NORM_MODULE_TYPES) and weight_decay_norm is not None:
                wd = weight_decay_norm
            if name == "bias":
                lr = bias_overrides.get("lr", lr)
                wd = bias_overrides.get("weight_decay", wd)
            groups.setdefault((lr, wd), []).append(param)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD over `model`'s trainable parameters with the hyper-parameters in ``cfg.SOLVER``."""
    s = cfg.SOLVER
    params = get_default_optimizer_params(
        model,
        base_lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        weight_decay_norm=s.WEIGHT_DECAY_NORM,
        bias_lr_factor=s.BIAS_LR_FACTOR,
        weight_decay_bias=s.WEIGHT_DECAY_BIAS,
    )
    if not params:
        raise ValueError("The model has no trainable parameters; check MODEL.BACKBONE.FREEZE_AT.")
    return torch.optim.SGD(
        params,
        lr=s.BASE_LR,
        momentum=s.MOMENTUM,
        nesterov=s.NESTEROV,
        weight_decay=s.WEIGHT_DECAY,
    )


class OptimizerCoverageError(RuntimeError):
    """The optimizer and the model it should train disagree on the trainable parameters."""


def check_optimizer_covers(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Check that `optimizer` steps exactly the trainable parameters of `model`.

    A module replaced after the optimizer was built (a SyncBatchNorm conversion that makes new
    Parameter objects, a head swapped for fine-tuning) leaves the optimizer holding the old
    tensors: the new ones get gradients but are never updated, silently. Parameters are
    compared by identity; a wrapper's ``module.`` prefix (DDP) is dropped from the names shown.

    Raises:
        OptimizerCoverageError: naming the first trainable parameters the optimizer lacks, or
            how many tensors it steps that are not trainable parameters of `model`.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [n.removeprefix("module.") for n, p in trainable if id(p) not in stepped]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise OptimizerCoverageError(
            f"The optimizer does not hold {len(missing)} of the model's {len(trainable)} "
            f"trainable parameters ({shown}): they would never be updated. Build the optimizer "
            "from the model that is trained, after any change to its modules (e.g. a "
            "SyncBatchNorm conversion that does not keep the parameter objects); to keep "
            "parameters fixed, set their requires_grad to False before building it."
        )
    extra = len(stepped - {id(p) for _, p in trainable})
    if extra:
        raise OptimizerCoverageError(
            f"The optimizer steps {extra} tensor(s) that are not trainable parameters of the "
            "model it trains (stale copies of replaced modules, or frozen parameters); build the "
            "optimizer from the model that is trained."
        )


def solver_values_in_use(
    cfg, model: nn.Module, optimizer: torch.optim.Optimizer, base_lrs: list[float]
) -> dict[str, float | bool]:
    """The SOLVER values an optimizer built by `build_optimizer` really uses, where they differ
    from `cfg`: after a resume, its state (and the scheduler's base LRs) came from a checkpoint.

    Each parameter's role (ordinary, normalisation, bias) is found by building the groups with
    distinct probe values; the values the loaded groups hold for each role give back the keys.

    Args:
        cfg: the config the optimizer was built from.
        model: the model whose parameters the optimizer holds.
        optimizer: the optimizer, after loading a state.
        base_lrs: the base LR of each of its groups (the scheduler's ``base_lrs``).

    Returns:
        ``{"SOLVER.BASE_LR": 0.01, ...}`` for each key whose value in use is not `cfg`'s.
    """
    s = cfg.SOLVER
    probe = get_default_optimizer_params(
        model, base_lr=1.0, weight_decay=1.0, weight_decay_norm=2.0, bias_lr_factor=3.0,
        weight_decay_bias=4.0,
    )  # fmt: skip
    group_of = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    # (is bias, probe weight decay) -> the index of one group holding such a parameter.
    roles: dict[tuple[bool, float], int] = {}
    for g in probe:
        for p in g["params"]:
            if id(p) in group_of:
                roles.setdefault((g["lr"] == 3.0, g["weight_decay"]), group_of[id(p)])
    groups = optimizer.param_groups
    found: dict[str, float | bool] = {}
    ordinary = roles.get((False, 1.0), roles.get((False, 2.0)))
    base_lr = float(s.BASE_LR)
    if ordinary is not None and base_lrs[ordinary] != base_lr:
        base_lr = found["SOLVER.BASE_LR"] = float(base_lrs[ordinary])
    bias = roles.get((True, 4.0))
    if bias is not None and base_lrs[bias] != base_lr * s.BIAS_LR_FACTOR:
        found["SOLVER.BIAS_LR_FACTOR"] = float(base_lrs[bias]) / base_lr if base_lr else 0.0
    expected_wd = {
        1.0: ("SOLVER.WEIGHT_DECAY", s.WEIGHT_DECAY),
        2.0: (
            "SOLVER.WEIGHT_DECAY_NORM",
            s.WEIGHT_DECAY if s.WEIGHT_DECAY_NORM is None else s.WEIGHT_DECAY_NORM,
        ),
    }
    for probe_wd, (key, value) in expected_wd.items():
        index = roles.get((False, probe_wd))
        if index is not None and groups[index]["weight_decay"] != value:
            found[key] = float(groups[index]["weight_decay"])
    if (
        bias is not None
        and s.WEIGHT_DECAY_BIAS is not None
        and groups[bias]["weight_decay"] != s.WEIGHT_DECAY_BIAS
    ):
        found["SOLVER.WEIGHT_DECAY_BIAS"] = float(groups[bias]["weight_decay"])
    if groups and groups[0].get("momentum", s.MOMENTUM) != s.MOMENTUM:
        found["SOLVER.MOMENTUM"] = float(groups[0]["momentum"])
    if groups and bool(groups[0].get("nesterov", s.NESTEROV)) != bool(s.NESTEROV):
        found["SOLVER.NESTEROV"] = bool(groups[0]["nesterov"])
    return found


class GradientClipper:
    """Clips gradients in place before the optimizer step.

    Args:
        clip_type: "value" (clamp every gradient element to ``[-clip_value, clip_value]``),
            "norm" (rescale each parameter's gradient to norm at most `clip_value`, detectron2's
            per-parameter rule) or "full_model" (one norm over all gradients together).
        clip_value: the bound.
        norm_type: the p of the p-norm for "norm" and "full_model".
    """

    _TYPES = ("value", "norm", "full_model")

    def __init__(self, *, clip_type: str, clip_value: float, norm_type: float = 2.0) -> None:
        if clip_type not in self._TYPES:
            raise ValueError(
                f"Unknown SOLVER.CLIP_GRADIENTS.CLIP_TYPE {clip_type!r}; use one of {self._TYPES}."
            )
        if clip_value <= 0:
            raise ValueError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be positive, got {clip_value}."
            )
        self.clip_type = clip_type
        self.clip_value = clip_value
        self.norm_type = norm_type

    def __call__(self, params: Iterable[torch.Tensor]) -> None:
        params = [p for p in params if p.grad is not None]
        if self.clip_type == "value":
            torch.nn.utils.clip_grad_value_(params, self.clip_value)
        elif self.clip_type == "norm":
            for p in params:
                torch.nn.utils.clip_grad_norm_(p, self.clip_value, self.norm_type)
        else:
            torch.nn.utils.clip_grad_norm_(params, self.clip_value, self.norm_type)


def build_gradient_clipper(cfg) -> Callable[[Iterable[torch.Tensor]], None] | None:
    """The clipper configured by ``cfg.SOLVER.CLIP_GRADIENTS``, or None when disabled."""
    c = cfg.SOLVER.CLIP_GRADIENTS
    if not c.ENABLED:
        return None
    return GradientClipper(clip_type=c.CLIP_TYPE, clip_value=c.CLIP_VALUE, norm_type=c.NORM_TYPE)
