"""Code and constants shared by test modules of several packages; fixtures live in the conftest
files, which import what they need from here.

Imports nothing from the test suite (only the standard library, torch and atrous), so that a
script outside it (benchmarks/gpu_check.py) can load this file by its path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from atrous.checkpoint import Checkpointer
from atrous.config import CfgNode, get_cfg
from atrous.modeling import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs" / "Cityscapes-SemanticSegmentation"
V3_CONFIG = CONFIG_DIR / "deeplab_v3_R_103_os16_mg124_poly_90k_bs16.yaml"
V3PLUS_CONFIG = CONFIG_DIR / "deeplab_v3_plus_R_103_os16_mg124_poly_90k_bs16.yaml"

# The overrides under which the reference outputs of the original were produced
# (tests/fixtures/detectron2/README.md), applied on top of the V3+ R103 config.
SMALL_REFERENCE_OVERRIDES = [
    "MODEL.RESNETS.DEPTH", "50",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "32",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", "[8]",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19",
    "INPUT.CROP.ENABLED", "False",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.SEM_SEG_HEAD.NORM", "BN",
    "MODEL.WEIGHTS", "",
]  # fmt: skip


FIXTURE_REFERENCE_DIR = REPO_ROOT / "tests" / "fixtures" / "detectron2"
# Outputs of torchvision's own classes (tests/fixtures/torchvision/README.md).
TORCHVISION_REFERENCE_DIR = REPO_ROOT / "tests" / "fixtures" / "torchvision"


def find_reference_dir() -> Path:
    """The folder of the original's reference outputs (tests/fixtures/detectron2).

    Raises:
        FileNotFoundError: the files are missing (the message says how to restore them).
    """
    # The suite carries its own copy of the original's outputs, so a clone anywhere runs it;
    # ATROUS_REFERENCE_DIR points it at another copy of the same files.
    override = os.environ.get("ATROUS_REFERENCE_DIR", "")
    directory = Path(override) if override else FIXTURE_REFERENCE_DIR
    if not (directory / "small_v3plus.pkl").is_file():
        raise FileNotFoundError(
            f"The detectron2 reference outputs are missing from {directory}"
            + (" (ATROUS_REFERENCE_DIR)" if override else "; restore tests/fixtures/ from git")
        )
    return directory


def load_config(path: Path | str, overrides: list[str] | None = None) -> CfgNode:
    """A fresh default config with `path` and then `overrides` merged in (not frozen)."""
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(overrides or [])
    return cfg


def build_reference_model(cfg: CfgNode, reference_dir: Path) -> torch.nn.Module:
    """The small V3+ of the reference outputs, with its detectron2 weights, in eval mode."""
    model = build_model(cfg)
    report = Checkpointer(model).load(str(reference_dir / "small_v3plus.pkl"))
    assert not report.missing and not report.shape_mismatched
    return model.eval()


def reference_bundle_overrides(reference_dir: Path) -> list[str]:
    """The reference model with its detectron2 weights, predicting at the input size."""
    return [
        *SMALL_REFERENCE_OVERRIDES,
        "MODEL.WEIGHTS", str(reference_dir / "small_v3plus.pkl"),
        "INPUT.MIN_SIZE_TEST", "0",
    ]  # fmt: skip


def run_cli_without(module: str, args: list[str]):
    """``atrous ARGS`` in a fresh process where `module` cannot be imported, as on an install
    without the extra that brings it. Returns the `subprocess.CompletedProcess` (text)."""
    script = (
        f"import sys; sys.modules[{module!r}] = None\n"
        f"from atrous.cli.main import main; sys.exit(main({args!r}))"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")},
        timeout=120,
    )


QUICKSTART = REPO_ROOT / "configs" / "Synthetic" / "deeplab_v3_plus_R_50_quickstart.yaml"

# The quickstart model at reference-small widths, trained at small scales: the part of TINY that
# benchmarks/gpu_check.py's tiny plan shares (it sets its own crop, schedule and test size).
TINY_WIDTHS_AND_TRAIN_SIZES = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "16",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16",
    "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", "[8]",
    "INPUT.MIN_SIZE_TRAIN", "(64, 80)",
    "INPUT.MAX_SIZE_TRAIN", "256",
]  # fmt: skip

# The quickstart config shrunk to seconds: reference-small widths, 64x128 images, 64x64 crops.
TINY = [
    *TINY_WIDTHS_AND_TRAIN_SIZES,
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "256",
    "INPUT.CROP.SIZE", "(64, 64)",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "4",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.CHECKPOINT_PERIOD", "2",
    "TEST.EVAL_PERIOD", "0",
    "DATALOADER.NUM_WORKERS", "0",
    "SEED", "0",
    "LOG_PERIOD", "1",
]  # fmt: skip


def alias_bomb(key: str = "SEED", levels: int = 9) -> str:
    """About 1 KB of YAML standing for 10**levels values, under a real key."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    lines.append(f"{key}: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def class_weights_cfg(weights, num_classes=3, loss_type="hard_pixel_mining") -> CfgNode:
    """A default config with MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS set to `weights` (a string)."""
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes),
                         "MODEL.SEM_SEG_HEAD.LOSS_TYPE", loss_type,
                         "MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS", weights])  # fmt: skip
    return cfg


# The ways a run's `last_checkpoint` record can be unusable, as `spoil_last_checkpoint` makes them.
UNUSABLE_LAST_CHECKPOINT = ("missing", "empty", "fifo", "folder", "passwd", "huge")


def spoil_last_checkpoint(folder: Path, how: str) -> None:
    """Replace ``folder/last_checkpoint`` by an unusable record of kind `how`: missing, empty, a
    FIFO, a folder, a link to /etc/passwd, or megabyte-sized text."""
    last = folder / "last_checkpoint"
    last.unlink()
    if how == "empty":
        last.write_text("")
    elif how == "fifo":
        os.mkfifo(last)
    elif how == "folder":
        last.mkdir()
    elif how == "passwd":
        last.symlink_to("/etc/passwd")
    elif how == "huge":
        last.write_text("model_final.pth" + " " * 5000 + "x" * 100_000)
    elif how != "missing":
        raise ValueError(f"unknown kind of unusable record {how!r}")


def training_env(datasets_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a training subprocess: datasets under `datasets_dir`, one thread."""
    # Neither torchrun's nor SLURM's variables of a surrounding job may leak into the runs.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK") and not k.startswith("SLURM_")
    }
    env.update(ATROUS_DATASETS=str(datasets_dir), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_metrics(out: Path) -> list[dict]:
    """The records of OUTPUT_DIR `out`'s metrics.json."""
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line]


def wait_for_iteration(out: Path, iteration: int, procs: list[subprocess.Popen]) -> None:
    """Until metrics.json (written every iteration, LOG_PERIOD 1) reaches `iteration`."""
    deadline = time.monotonic() + 120
    while True:
        for proc in procs:
            assert proc.poll() is None, f"training ended early ({proc.returncode})"
        assert time.monotonic() < deadline, "training made no progress"
        try:
            if max((r["iteration"] for r in run_metrics(out)), default=-1) >= iteration:
                return
        except (FileNotFoundError, ValueError):  # not written yet, or a line half-written
            pass
        time.sleep(0.05)
