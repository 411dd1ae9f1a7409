"""`validate_config`: every value that cannot work is reported up front, naming its key."""

from __future__ import annotations

import re

import pytest
import torch

from atrous.config import ConfigError, get_cfg, get_config_file, list_config_files
from atrous.config.validate import validate_config
from tests.helpers import class_weights_cfg


@pytest.mark.parametrize("name", list_config_files())
def test_shipped_configs_pass(name: str) -> None:
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(name))
    validate_config(cfg, world_size=1, training=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH must be a positive whole number"),
        (["SOLVER.IMS_PER_BATCH", "-2"], "SOLVER.IMS_PER_BATCH"),
        (["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "0"], "MODEL.SEM_SEG_HEAD.NUM_CLASSES"),
        (["DATALOADER.NUM_WORKERS", "-1"], "DATALOADER.NUM_WORKERS must be a whole number >= 0"),
        (["INPUT.MIN_SIZE_TRAIN", "(0, 512)"], "INPUT.MIN_SIZE_TRAIN must hold positive"),
        (["INPUT.MIN_SIZE_TRAIN", "()"], "INPUT.MIN_SIZE_TRAIN must be a list of sizes"),
        (["INPUT.MAX_SIZE_TEST", "0"], "INPUT.MAX_SIZE_TEST"),
        (["TEST.AUG.MIN_SIZES", "(400, -1)"], "TEST.AUG.MIN_SIZES"),
        (["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute",
          "INPUT.CROP.SIZE", "(0, 512)"], "INPUT.CROP.SIZE must be two positive whole numbers"),
        (["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute",
          "INPUT.CROP.SIZE", "(500, 512)"], "must be divisible by the output stride 32"),
        (["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "relative"], "INPUT.CROP.TYPE absolute"),
        (["INPUT.FORMAT", "rgb"], "INPUT.FORMAT is 'rgb'; it must be one of 'RGB', 'BGR'"),
        (["MODEL.RESNETS.NORM", "BatchNorm"], "MODEL.RESNETS.NORM is 'BatchNorm'"),
        (["MODEL.RESNETS.DEPTH", "34"], "MODEL.RESNETS.DEPTH is 34"),
        (["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "ce"], "MODEL.SEM_SEG_HEAD.LOSS_TYPE is 'ce'"),
        (["MODEL.SEM_SEG_HEAD.TOP_K_PERCENT_PIXELS", "0.0"], "TOP_K_PERCENT_PIXELS"),
        (["MODEL.PIXEL_STD", "[1.0, 0.0, 1.0]"], "MODEL.PIXEL_STD must not contain 0"),
        (["MODEL.PIXEL_MEAN", "[1.0, 2.0]"], "MODEL.PIXEL_MEAN needs three values"),
        (["SOLVER.LR_SCHEDULER_NAME", "Poly"], "SOLVER.LR_SCHEDULER_NAME is 'Poly'"),
        (["SOLVER.AMP.DTYPE", "fp16"], "SOLVER.AMP.DTYPE is 'fp16'"),
        (["TEST.FAST.DTYPE", "int8"], "TEST.FAST.DTYPE is 'int8'"),
        (["TEST.SLIDING_WINDOW.ENABLED", "True", "TEST.SLIDING_WINDOW.STRIDE", "(0, 683)"],
         "TEST.SLIDING_WINDOW.STRIDE must be two positive"),
        (["MODEL.DEVICE", "gpu"], "MODEL.DEVICE must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        (["LOG_PERIOD", "0"], "LOG_PERIOD"),
    ],
)  # fmt: skip
def test_bad_values_name_their_key(overrides: list[str], message: str) -> None:
    cfg = get_cfg()
    cfg.merge_from_list(overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["SOLVER.BASE_LR", "-0.1"], "SOLVER.BASE_LR must be a finite number >= 0.0"),
        (["SOLVER.BASE_LR", "1e400"], "SOLVER.BASE_LR must be a finite number"),  # inf
        (["SOLVER.MAX_ITER", "0"], "SOLVER.MAX_ITER must be a positive whole number"),
        (["SOLVER.CHECKPOINT_PERIOD", "-1"], "SOLVER.CHECKPOINT_PERIOD"),
        (["SOLVER.WEIGHT_DECAY", "-1e-4"], "SOLVER.WEIGHT_DECAY"),
        (["SOLVER.BEST_CHECKPOINT.MODE", "maximum"],
         "SOLVER.BEST_CHECKPOINT.MODE is 'maximum'; it must be 'max'"),
        (["SOLVER.BEST_CHECKPOINT.METRIC", "sem_seg/mIoU"],
         "SOLVER.BEST_CHECKPOINT.METRIC needs evaluations during training, but DATASETS.TEST"),
        (["SOLVER.EARLY_STOP.PATIENCE", "3"],
         "SOLVER.EARLY_STOP.PATIENCE counts evaluations without improvement of "
         "SOLVER.BEST_CHECKPOINT.METRIC, which is empty"),
        (["SOLVER.EARLY_STOP.PATIENCE", "-1"], "SOLVER.EARLY_STOP.PATIENCE must be a whole"),
        (["SOLVER.EARLY_STOP.MIN_DELTA", "-0.5"], "SOLVER.EARLY_STOP.MIN_DELTA must be"),
        (["SOLVER.BEST_CHECKPOINT.METRIC", "sem_seg/mIoU", "SOLVER.EARLY_STOP.PATIENCE", "2",
          "DATASETS.TEST", "('val',)", "TEST.EVAL_PERIOD", "0"],
         "SOLVER.EARLY_STOP.PATIENCE needs periodic evaluations, but TEST.EVAL_PERIOD is 0"),
        (["TRACKING.BACKENDS", "['mlflow', 'neptune']"],
         "TRACKING.BACKENDS names 'neptune'; use any of tensorboard, mlflow, wandb"),
        (["TRACKING.BACKENDS", "['mlflow', 'mlflow']"], "TRACKING.BACKENDS names a backend twice"),
        (["TRACKING.WANDB_MODE", "disabled"], "TRACKING.WANDB_MODE is 'disabled'"),
        (["TRACKING.FLUSH_TIMEOUT", "0"], "TRACKING.FLUSH_TIMEOUT must be a number of seconds"),
    ],
)  # fmt: skip
def test_solver_keys_are_checked_for_training_only(overrides: list[str], message: str) -> None:
    cfg = get_cfg()
    cfg.merge_from_list(overrides)
    validate_config(cfg)  # evaluation does not use the solver
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(cfg, training=True)


def test_batch_must_split_over_the_processes() -> None:
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.IMS_PER_BATCH", "3"])
    validate_config(cfg, world_size=1)
    validate_config(cfg, world_size=3)
    with pytest.raises(ConfigError, match=r"IMS_PER_BATCH \(3\).*processes \(2\).*2 or 4"):
        validate_config(cfg, world_size=2)
    with pytest.raises(ConfigError, match=r"IMS_PER_BATCH 8"):
        validate_config(cfg, world_size=8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only machine")
def test_cuda_on_a_cpu_machine_names_the_fix() -> None:
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cuda"])
    with pytest.raises(ConfigError, match=r"MODEL\.DEVICE is 'cuda'.*pass MODEL\.DEVICE cpu"):
        validate_config(cfg)
    validate_config(cfg, check_device=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_index_must_exist() -> None:
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cuda"])
    validate_config(cfg)
    cfg.merge_from_list(["MODEL.DEVICE", f"cuda:{torch.cuda.device_count()}"])
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
        validate_config(cfg)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("[1.0, 2.0]", "has 2 weights but MODEL.SEM_SEG_HEAD.NUM_CLASSES is 3"),
        ("median", "CLASS_WEIGHTS is 'median'; use one of 'median_frequency', "
         "'inverse_sqrt_frequency'"),
        ("[1.0, -2.0, 1.0]", "must hold finite numbers >= 0"),
        ("[0.0, 0.0, 0.0]", "needs at least one weight > 0"),
        ("[1.0, a, 1.0]", r"is '\[1.0, a, 1.0\]'; use one of"),
    ],
)  # fmt: skip
def test_bad_class_weights_are_config_errors(weights, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(class_weights_cfg(weights), check_device=False)


@pytest.mark.parametrize(
    "weights", ["None", "[]", "[1, 2.5, 3]", "median_frequency", "inverse_sqrt_frequency"]
)
def test_valid_class_weights_pass(weights):
    validate_config(class_weights_cfg(weights), check_device=False)


def test_one_gpu_index_for_several_processes_per_machine_is_refused(monkeypatch) -> None:
    # As on an 8-GPU machine: "cuda:3" fits one process; eight would all land on GPU 3 while
    # DDP is told each process's own GPU.
    from atrous.utils import devices

    monkeypatch.setattr(devices, "visible_gpu_count", lambda: 8)
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cuda:3"])
    validate_config(cfg, world_size=1)
    with pytest.raises(ConfigError, match=r"all 8 processes of this machine on one GPU"):
        validate_config(cfg, world_size=16, processes_per_machine=8)


@pytest.mark.parametrize(
    ("opts", "training", "expected"),
    [
        (["SEED", str(2**70)], False, "SEED must be a whole number"),
        (["OUTPUT_DIR", '""'], True, "OUTPUT_DIR is empty"),
    ],
)
def test_seed_out_of_range_and_empty_output_dir_are_named_up_front(opts, training, expected):
    cfg = get_cfg()
    cfg.merge_from_list(opts)
    with pytest.raises(ConfigError, match=expected):
        validate_config(cfg, training=training, check_device=False)


def test_best_checkpoint_and_early_stop_with_evaluations_pass() -> None:
    cfg = get_cfg()
    cfg.merge_from_list(
        ["SOLVER.BEST_CHECKPOINT.METRIC", "sem_seg/mIoU", "SOLVER.BEST_CHECKPOINT.MODE", "max",
         "SOLVER.EARLY_STOP.PATIENCE", "3", "DATASETS.TEST", "('val',)", "TEST.EVAL_PERIOD", "100",
         "TRACKING.BACKENDS", "['tensorboard', 'mlflow', 'wandb']"]
    )  # fmt: skip
    validate_config(cfg, training=True)
