"""`atrous quickstart` end to end, shrunk to seconds: data, training, evaluation, pictures."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def test_quickstart_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "ATROUS_DATASETS": str(tmp_path / "datasets"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "atrous.cli.main", "quickstart",
        "--num-train", "4", "--num-val", "2", "--size", "64x128", "--num-pictures", "2",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "16",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "INPUT.CROP.SIZE", "(64, 64)",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64",
        "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.BEST_CHECKPOINT.METRIC", "sem_seg/mIoU", "TEST.EVAL_PERIOD", "2",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in ("[1/4]", "[2/4]", "[3/4] Validation mIoU:", "[4/4] Wrote 2 prediction pictures"):
        assert step in proc.stdout
    # The pictures come from the best checkpoint, and the command says which one that is.
    best = json.loads((out / "model_best.json").read_text())
    assert (
        f"with the weights of {out / 'model_best.pth'} (the best evaluation of its run: "
        f"sem_seg/mIoU {best['value']:.4g} at iteration {best['iteration']})"
    ) in proc.stdout
    assert (tmp_path / "datasets" / "synthetic" / "leftImg8bit" / "val").is_dir()
    assert (out / "model_final.pth").is_file() and (out / "training_curves.png").is_file()
    assert any("sem_seg/mIoU" in json.loads(line) for line in (out / "metrics.json").open())
    pictures = sorted((out / "predictions").glob("*.png"))
    assert len(pictures) == 2
    # photo | prediction overlay | ground truth, side by side
    assert Image.open(pictures[0]).size == (3 * 128, 64)


def test_quickstart_bad_size_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "ATROUS_DATASETS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "atrous.cli.main", "quickstart", "--size", "big"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "--size must look like 256x512" in proc.stderr


@pytest.mark.slow
def test_quickstart_twice_starts_afresh_and_keeps_the_first_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "ATROUS_DATASETS": str(tmp_path / "datasets"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "atrous.cli.main", "quickstart",
        "--num-train", "2", "--num-val", "1", "--size", "64x128", "--num-pictures", "0",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "16",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "INPUT.CROP.SIZE", "(64, 64)",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64",
        "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    for _ in range(2):
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (previous,) = (out / "previous").iterdir()
    assert (previous / "model_final.pth").is_file() and (out / "model_final.pth").is_file()
    assert len((out / "metrics.json").read_text().splitlines()) == 2  # iteration 0 + evaluation
    assert f"moved the previous contents of {out} to {previous}" in proc.stdout


def test_ctrl_c_stops_with_a_checkpoint_and_the_command_to_continue(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "ATROUS_DATASETS": str(tmp_path / "datasets"), "OMP_NUM_THREADS": "1"}
    opts = [
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "16",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "INPUT.CROP.SIZE", "(64, 64)",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "SOLVER.MAX_ITER", "8",
        "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "LOG_PERIOD", "1",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "atrous.cli.main", "quickstart", "--num-train", "4",
           "--num-val", "2", "--size", "64x128", *opts]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not any('"iteration": 2' in line for line in _lines(out / "metrics.json")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 75, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stdout + stderr and "[3/4]" not in stdout
    hint = stderr.split("continue it with: ")[1].splitlines()[0]
    words = shlex.split(hint)
    assert words[:2] == ["atrous", "train"] and "--resume" in words

    # The printed command continues the run to its end.
    resumed = subprocess.run(
        [sys.executable, "-m", "atrous.cli.main", *words[1:]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    assert "Resuming from iteration" in (out / "log.txt").read_text()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
