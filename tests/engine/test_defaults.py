"""detectron2's command-line flags and the per-run set-up (output dir, log, seed, config dump)."""

from __future__ import annotations

import logging
import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from atrous.config import get_cfg
from atrous.engine import default_argument_parser, default_setup, seed_all_rng
from atrous.engine.output_dir import release_output_dir
from atrous.utils.folders import LOCK_NAME, OutputDirError, OutputDirLockedError

REPO = Path(__file__).resolve().parents[2]

SEED_CONFIG = (
    "configs/Cityscapes-SemanticSegmentation/deeplab_v3_plus_R_103_os16_mg124_poly_90k_bs16.yaml"
)


@pytest.fixture(autouse=True)
def _restore_logger():
    """default_setup configures the "atrous" logger for a run; undo it for the other tests."""
    logger = logging.getLogger("atrous")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]
    release_output_dir()


def test_seed_command_lines_parse() -> None:
    parser = default_argument_parser()
    args = parser.parse_args(["--config-file", SEED_CONFIG, "--num-gpus", "8"])
    assert args.config_file == SEED_CONFIG and args.num_gpus == 8 and args.opts == []
    assert not args.eval_only and not args.resume
    args = parser.parse_args(
        ["--config-file", SEED_CONFIG, "--eval-only", "MODEL.WEIGHTS", "/p/model_final_a8a355.pkl"]
    )
    assert args.eval_only and args.opts == ["MODEL.WEIGHTS", "/p/model_final_a8a355.pkl"]
    args = parser.parse_args(
        ["--num-machines", "2", "--machine-rank", "1", "--dist-url", "tcp://10.0.0.1:1234",
         "--resume", "--config-file", "c.yaml", "SOLVER.BASE_LR", "0.1"]
    )  # fmt: skip
    assert (args.num_machines, args.machine_rank, args.dist_url) == (2, 1, "tcp://10.0.0.1:1234")
    assert args.resume and args.opts == ["SOLVER.BASE_LR", "0.1"]


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_default_setup_writes_config_log_and_seeds(tmp_path: Path) -> None:
    cfg = get_cfg()
    cfg.merge_from_file(SEED_CONFIG)
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path / "out"), "SEED", "7", "SOLVER.BASE_LR", 0.5])
    args = default_argument_parser().parse_args(["--config-file", SEED_CONFIG])
    assert default_setup(cfg, args) == 7
    first = _draws()
    seed_all_rng(7)
    assert _draws() == first

    saved = get_cfg()
    saved.merge_from_file(str(tmp_path / "out" / "config.yaml"))
    assert saved.SOLVER.BASE_LR == 0.5 and saved.MODEL.RESNETS.DEPTH == 101
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "Using seed 7" in log and "torch " in log and "Contents of args.config_file" in log


def test_random_seed_is_logged_and_repeatable(tmp_path: Path) -> None:
    cfg = get_cfg()
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "SEED", "-1"])
    seed = default_setup(cfg, None)
    draws = _draws()
    log = (tmp_path / "log.txt").read_text()
    logged = int(re.search(r"pass SEED (\d+) to repeat", log).group(1))
    assert logged == seed
    seed_all_rng(logged)
    assert _draws() == draws


def test_overwrite_flag_parses_and_excludes_resume(capsys) -> None:
    parser = default_argument_parser()
    assert parser.parse_args(["--overwrite"]).overwrite
    assert not parser.parse_args([]).overwrite
    with pytest.raises(SystemExit):
        parser.parse_args(["--resume", "--overwrite"])
    assert "not allowed with argument --resume" in capsys.readouterr().err


_SETUP_AND_WAIT = textwrap.dedent(
    """
    import sys
    from atrous.config import get_cfg
    from atrous.engine import default_argument_parser, default_setup
    cfg = get_cfg()
    cfg.merge_from_list(["OUTPUT_DIR", sys.argv[1]])
    default_setup(cfg, default_argument_parser().parse_args([]))
    print("set up", flush=True)
    sys.stdin.read()
    """
)


def test_second_setup_on_a_folder_in_use_is_refused_naming_the_first(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-c", _SETUP_AND_WAIT, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for line in first.stdout:  # the log goes to stdout too
            if line.strip() == "set up":
                break
        cfg = get_cfg()
        cfg.merge_from_list(["OUTPUT_DIR", str(out)])
        log_before = (out / "log.txt").read_text()
        with pytest.raises(
            OutputDirLockedError, match=rf"in use by another atrous run: PID {first.pid} "
        ):
            default_setup(cfg, default_argument_parser().parse_args([]))
        assert (out / "log.txt").read_text() == log_before  # refused before logging there
    finally:
        first.stdin.close()
        first.wait(timeout=60)
    assert first.returncode == 0 and not (out / LOCK_NAME).exists()  # released at exit
    default_setup(cfg, default_argument_parser().parse_args([]))


def test_used_folder_needs_a_flag_and_eval_only_keeps_its_config(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"iteration": 0}\n')
    (out / "config.yaml").write_text("TRAINING: run\n")
    cfg = get_cfg()
    cfg.merge_from_list(["OUTPUT_DIR", str(out)])
    parser = default_argument_parser()
    with pytest.raises(OutputDirError, match="holds a previous run"):
        default_setup(cfg, parser.parse_args([]))
    default_setup(cfg, parser.parse_args(["--eval-only"]))
    assert (out / "config.yaml").read_text() == "TRAINING: run\n"
    assert "OUTPUT_DIR" in (out / "eval_config.yaml").read_text()


def test_log_exception_to_files_writes_the_traceback_to_log_txt_only(tmp_path: Path, capsys):
    from atrous.engine.defaults import log_exception_to_files, setup_logger

    setup_logger(str(tmp_path))
    try:
        raise ValueError("the cause")
    except ValueError as error:
        log_exception_to_files(error)
        log_exception_to_files(error)  # logged once, however many layers report it
    log = (tmp_path / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and "ValueError: the cause" in log
    assert log.count("Traceback") == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    setup_logger(None)
