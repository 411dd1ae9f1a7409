"""Checks of a loaded config before any work starts, each failure naming the key and the fix.

The builders check their own arguments too, but only when they run, which can be after minutes of
data indexing or a whole inference, and in every process of a distributed run. `validate_config`
runs once, right after the config is loaded, and covers the keys a user is likely to get wrong:
sizes and counts that must be positive, names that must be one of a few choices, the batch split
over processes, and whether the requested device exists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .config import ConfigError

__all__ = ["CLASS_WEIGHT_METHODS", "TRACKING_BACKENDS", "validate_config"]

# Names the builders accept (atrous.layers.norm, solver.lr_scheduler, data.transforms, ...).
_CHOICES: dict[str, tuple[Any, ...]] = {
    "MODEL.BACKBONE.NAME": (
        "build_resnet_deeplab_backbone",
        "build_resnet_backbone",
        "build_mobilenet_v3_large_backbone",
    ),
    "MODEL.RESNETS.DEPTH": (50, 101, 152),
    "MODEL.RESNETS.NORM": ("", "BN", "SyncBN", "naiveSyncBN", "nnSyncBN", "FrozenBN", "GN"),
    "MODEL.RESNETS.STEM_TYPE": ("basic", "deeplab"),
    "MODEL.MOBILENET.NORM": ("", "BN", "SyncBN", "naiveSyncBN", "nnSyncBN", "FrozenBN", "GN"),
    "MODEL.SEM_SEG_HEAD.NAME": ("DeepLabV3Head", "DeepLabV3PlusHead", "TorchvisionDeepLabHead"),
    "MODEL.SEM_SEG_HEAD.NORM": ("", "BN", "SyncBN", "naiveSyncBN", "nnSyncBN", "FrozenBN", "GN"),
    "MODEL.SEM_SEG_HEAD.LOSS_TYPE": ("cross_entropy", "hard_pixel_mining"),
    "INPUT.FORMAT": ("RGB", "BGR"),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": ("choice", "range"),
    "INPUT.CROP.TYPE": ("relative_range", "relative", "absolute", "absolute_range"),
    "SOLVER.LR_SCHEDULER_NAME": ("WarmupPolyLR", "WarmupMultiStepLR", "WarmupCosineLR"),
    "SOLVER.WARMUP_METHOD": ("linear", "constant"),
    "SOLVER.AMP.DTYPE": ("float16", "bfloat16"),
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": ("value", "norm"),
    "TEST.FAST.DTYPE": ("bfloat16", "float16", "float32"),
    "FLOAT32_PRECISION": ("", "highest", "high", "medium"),  # atrous.utils.devices
}

# key -> smallest allowed value; integers (counts, sizes, periods).
_MIN_INT: dict[str, int] = {
    "SOLVER.IMS_PER_BATCH": 1,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 1,
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 0,
    "DATALOADER.NUM_WORKERS": 0,
    "INPUT.MAX_SIZE_TRAIN": 1,
    "INPUT.MIN_SIZE_TEST": 0,  # 0 disables resizing
    "INPUT.MAX_SIZE_TEST": 1,
    "TEST.EVAL_PERIOD": 0,
    "TEST.AUG.MAX_SIZE": 1,
    "LOG_PERIOD": 1,
}
_MIN_INT_TRAINING: dict[str, int] = {
    "SOLVER.MAX_ITER": 1,
    "SOLVER.WARMUP_ITERS": 0,
    "SOLVER.CHECKPOINT_PERIOD": 0,
    "SOLVER.MAX_TO_KEEP": 0,
}
# key -> smallest allowed value; floats, which must also be finite.
_MIN_FLOAT_TRAINING: dict[str, float] = {
    "SOLVER.BASE_LR": 0.0,
    "SOLVER.MOMENTUM": 0.0,
    "SOLVER.WEIGHT_DECAY": 0.0,
    "SOLVER.WEIGHT_DECAY_NORM": 0.0,
    "SOLVER.GAMMA": 0.0,
    "SOLVER.WARMUP_FACTOR": 0.0,
}
# keys holding a list of positive integers (pixel sizes).
_POSITIVE_INT_LISTS = ("INPUT.MIN_SIZE_TRAIN", "TEST.AUG.MIN_SIZES")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_ints(key: str, value: Any, *, allow_empty: bool = False) -> None:
    if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
        raise ConfigError(
            f"{key} must be a list of sizes in pixels, e.g. (512, 640), got {value!r}."
        )
    bad = [v for v in value if not _is_int(v) or v < 1]
    if bad:
        raise ConfigError(f"{key} must hold positive whole numbers of pixels, got {list(value)}.")


def check_device_available(device: Any, *, processes_per_machine: int = 1) -> None:
    """Refuse a MODEL.DEVICE value that is malformed or that this machine cannot honour.

    Args:
        device: MODEL.DEVICE.
        processes_per_machine: processes of the run on this machine; ``cuda:N`` is refused with
            more than one (they would all use GPU N).
    """
    from atrous.utils.devices import DeviceError, choose_device, visible_gpu_count

    try:
        choose_device(
            device, cuda_count=visible_gpu_count(), processes_per_machine=processes_per_machine
        )
    except DeviceError as error:
        raise ConfigError(str(error)) from None


def _check_crop(cfg: Any) -> None:
    crop = cfg.INPUT.CROP
    size = crop.SIZE
    if crop.TYPE != "absolute":
        # atrous.modeling.build.aspp_pool_kernel_size: the pooling window is crop / stride.
        raise ConfigError(
            "The DeepLab heads size ASPP's image pooling from the training crop: with "
            f"INPUT.CROP.ENABLED True set INPUT.CROP.TYPE absolute (got {crop.TYPE!r}) and "
            "INPUT.CROP.SIZE in pixels."
        )
    _check_pairs(cfg, ("INPUT.CROP.SIZE",))
    if cfg.MODEL.BACKBONE.NAME == "build_mobilenet_v3_large_backbone":
        stride = 16 if cfg.MODEL.MOBILENET.DILATED else 32
        why = f"MODEL.MOBILENET.DILATED {cfg.MODEL.MOBILENET.DILATED}"
    else:
        dilation = cfg.MODEL.RESNETS.RES5_DILATION
        stride = 32 // dilation if dilation in (1, 2, 4) else 32
        why = f"MODEL.RESNETS.RES5_DILATION {dilation}"
    # torchvision's head pools globally whatever the crop.
    pooled_by_crop = cfg.MODEL.SEM_SEG_HEAD.NAME != "TorchvisionDeepLabHead"
    if pooled_by_crop and (size[0] % stride or size[1] % stride):
        raise ConfigError(
            f"INPUT.CROP.SIZE {tuple(size)} must be divisible by the output stride {stride} "
            f"({why}), e.g. "
            f"({-(-size[0] // stride) * stride}, {-(-size[1] // stride) * stride})."
        )
    area = crop.SINGLE_CATEGORY_MAX_AREA
    if not _is_number(area) or not 0 < area <= 1:
        raise ConfigError(f"INPUT.CROP.SINGLE_CATEGORY_MAX_AREA must be in (0, 1], got {area!r}.")


# The CLASS_WEIGHTS methods atrous.data.statistics computes (the config floor cannot import it).
CLASS_WEIGHT_METHODS = ("median_frequency", "inverse_sqrt_frequency")


def _check_class_weights(head: Any) -> None:
    key = "MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS"
    value = head.CLASS_WEIGHTS
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return
    if isinstance(value, str):
        if value not in CLASS_WEIGHT_METHODS:
            shown = ", ".join(repr(m) for m in CLASS_WEIGHT_METHODS)
            raise ConfigError(
                f"{key} is {value!r}; use one of {shown}, a list of one weight per class, or "
                "None (unweighted)."
            )
        return
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} must be a list of floats, a method name or None, got {value!r}.")
    bad = [v for v in value if not _is_number(v) or not math.isfinite(v) or v < 0]
    if bad:
        raise ConfigError(f"{key} must hold finite numbers >= 0, got {list(value)}.")
    if not any(v > 0 for v in value):
        raise ConfigError(f"{key} needs at least one weight > 0, got {list(value)}.")
    if len(value) != head.NUM_CLASSES:
        raise ConfigError(
            f"{key} has {len(value)} weights but MODEL.SEM_SEG_HEAD.NUM_CLASSES is "
            f"{head.NUM_CLASSES}: give one weight per class (index = class id)."
        )


# The experiment trackers atrous.engine.tracking writes to.
TRACKING_BACKENDS = ("tensorboard", "mlflow", "wandb")


def _check_tracking(tracking: Any) -> None:
    backends = tracking.BACKENDS
    if not isinstance(backends, (list, tuple)) or not all(isinstance(b, str) for b in backends):
        raise ConfigError(
            f"TRACKING.BACKENDS must be a list of names, e.g. [tensorboard, mlflow], got "
            f"{backends!r}."
        )
    unknown = [b for b in backends if b not in TRACKING_BACKENDS]
    if unknown or len(set(backends)) != len(backends):
        shown = ", ".join(TRACKING_BACKENDS)
        what = f"names {unknown[0]!r}" if unknown else "names a backend twice"
        raise ConfigError(f"TRACKING.BACKENDS {what}; use any of {shown} (or [] for none).")
    import importlib.util

    for backend in ("mlflow", "wandb"):
        if backend in backends and importlib.util.find_spec(backend) is None:
            raise ConfigError(
                f"TRACKING.BACKENDS names {backend}, which is not installed: "
                "pip install 'atrous[tracking]' (or remove it from TRACKING.BACKENDS)."
            )
    if tracking.WANDB_MODE not in ("", "online", "offline"):
        raise ConfigError(
            f"TRACKING.WANDB_MODE is {tracking.WANDB_MODE!r}; it must be 'online', 'offline' or "
            "'' (WANDB_MODE, else online)."
        )
    for key in ("TIMEOUT", "FLUSH_TIMEOUT"):
        value = tracking.get(key)
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"TRACKING.{key} must be a number of seconds > 0, got {value!r}.")


def _check_best_and_early_stop(cfg: Any) -> None:
    best, stop = cfg.SOLVER.BEST_CHECKPOINT, cfg.SOLVER.EARLY_STOP
    if not isinstance(best.METRIC, str):
        raise ConfigError(
            f"SOLVER.BEST_CHECKPOINT.METRIC must be a metric name such as 'sem_seg/mIoU' (or "
            f"'' for none), got {best.METRIC!r}."
        )
    if best.MODE not in ("max", "min"):
        raise ConfigError(
            f"SOLVER.BEST_CHECKPOINT.MODE is {best.MODE!r}; it must be 'max' (higher is better, "
            "e.g. mIoU) or 'min' (e.g. a loss)."
        )
    patience = stop.PATIENCE
    if not _is_int(patience) or patience < 0:
        raise ConfigError(
            f"SOLVER.EARLY_STOP.PATIENCE must be a whole number of evaluations >= 0 (0: never "
            f"stop early), got {patience!r}."
        )
    delta = stop.MIN_DELTA
    if not _is_number(delta) or not math.isfinite(delta) or delta < 0:
        raise ConfigError(f"SOLVER.EARLY_STOP.MIN_DELTA must be a number >= 0, got {delta!r}.")
    if not best.METRIC and not patience:
        return
    wanted = "SOLVER.EARLY_STOP.PATIENCE" if patience else "SOLVER.BEST_CHECKPOINT.METRIC"
    if patience and not best.METRIC:
        raise ConfigError(
            "SOLVER.EARLY_STOP.PATIENCE counts evaluations without improvement of "
            "SOLVER.BEST_CHECKPOINT.METRIC, which is empty: set it, e.g. "
            "SOLVER.BEST_CHECKPOINT.METRIC sem_seg/mIoU."
        )
    if not cfg.DATASETS.TEST:
        raise ConfigError(
            f"{wanted} needs evaluations during training, but DATASETS.TEST is empty: name a "
            "validation dataset there."
        )
    if patience and cfg.TEST.EVAL_PERIOD <= 0:
        raise ConfigError(
            "SOLVER.EARLY_STOP.PATIENCE needs periodic evaluations, but TEST.EVAL_PERIOD is "
            f"{cfg.TEST.EVAL_PERIOD}: set it to the iterations between evaluations, e.g. "
            "TEST.EVAL_PERIOD 1000."
        )


def _check_pairs(cfg: Any, keys: Iterable[str]) -> None:
    for key in keys:
        value = cfg.value_at(key)
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 2
            or not all(_is_int(v) and v >= 1 for v in value)
        ):
            raise ConfigError(
                f"{key} must be two positive whole numbers of pixels (height, width), got "
                f"{value!r}."
            )


def validate_config(
    cfg: Any,
    *,
    world_size: int | None = None,
    processes_per_machine: int = 1,
    training: bool = False,
    check_device: bool = True,
) -> None:
    """Raise ConfigError, naming the key, for the first value that cannot work.

    Args:
        cfg: a loaded config (atrous's `get_cfg()` layout).
        world_size: number of processes of the run; when given, SOLVER.IMS_PER_BATCH must split
            evenly over them.
        training: also check the solver keys (learning rate, iterations, periods).
        processes_per_machine: processes of the run on this machine (``--num-gpus``).
        check_device: check that MODEL.DEVICE exists on this machine.

    Raises:
        ConfigError: the message names the key, the value and what to set instead.
    """
    for key, choices in _CHOICES.items():
        value = cfg.value_at(key)
        if value not in choices:
            shown = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{key} is {value!r}; it must be one of {shown}.")
    minimums = dict(_MIN_INT, **(_MIN_INT_TRAINING if training else {}))
    for key, low in minimums.items():
        value = cfg.value_at(key)
        if not _is_int(value) or value < low:
            what = "a positive whole number" if low == 1 else f"a whole number >= {low}"
            raise ConfigError(f"{key} must be {what}, got {value!r}.")
    if training:
        for key, low in _MIN_FLOAT_TRAINING.items():
            value = cfg.value_at(key)
            if not _is_number(value) or not math.isfinite(value) or value < low:
                raise ConfigError(f"{key} must be a finite number >= {low}, got {value!r}.")
    for key in _POSITIVE_INT_LISTS:
        _positive_ints(key, cfg.value_at(key))
    width = cfg.MODEL.MOBILENET.WIDTH_MULT
    if not _is_number(width) or not math.isfinite(width) or width <= 0:
        raise ConfigError(f"MODEL.MOBILENET.WIDTH_MULT must be a number > 0, got {width!r}.")
    top_k = cfg.MODEL.SEM_SEG_HEAD.TOP_K_PERCENT_PIXELS
    if not _is_number(top_k) or not 0 < top_k <= 1:
        raise ConfigError(
            f"MODEL.SEM_SEG_HEAD.TOP_K_PERCENT_PIXELS must be in (0, 1], got {top_k!r}."
        )
    _check_class_weights(cfg.MODEL.SEM_SEG_HEAD)
    seed = cfg.SEED
    # torch, numpy and Python take seeds of 64 bits; each process adds its rank.
    if not _is_int(seed) or not -(2**63) <= seed < 2**63 - 2**16:
        raise ConfigError(
            f"SEED must be a whole number between -2**63 and 2**63 - 65536 (negative: a random "
            f"seed), got {str(seed)[:60]!s}."
        )
    if training:
        _check_best_and_early_stop(cfg)
        _check_tracking(cfg.TRACKING)
    if training and not str(cfg.OUTPUT_DIR).strip():
        raise ConfigError(
            "OUTPUT_DIR is empty: a training run writes its checkpoints, metrics and log there. "
            "Set OUTPUT_DIR to a folder, e.g. OUTPUT_DIR output/run1."
        )
    for key in ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"):
        value = cfg.value_at(key)
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ConfigError(f"{key} needs three values (one per channel), got {value!r}.")
    if any(s == 0 for s in cfg.MODEL.PIXEL_STD):
        raise ConfigError(f"MODEL.PIXEL_STD must not contain 0, got {list(cfg.MODEL.PIXEL_STD)}.")
    if cfg.INPUT.CROP.ENABLED:
        _check_crop(cfg)
    if cfg.TEST.SLIDING_WINDOW.ENABLED:
        _check_pairs(cfg, ("TEST.SLIDING_WINDOW.SIZE", "TEST.SLIDING_WINDOW.STRIDE"))
    if check_device:
        check_device_available(cfg.MODEL.DEVICE, processes_per_machine=processes_per_machine)

    batch = cfg.SOLVER.IMS_PER_BATCH
    if world_size is not None and world_size > 1 and batch % world_size:
        low = batch // world_size * world_size
        hint = f"{low} or {low + world_size}" if low else f"{world_size}"
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH ({batch}) must be divisible by the number of processes "
            f"({world_size}): set SOLVER.IMS_PER_BATCH {hint}, or change --num-gpus."
        )
