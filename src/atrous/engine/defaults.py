"""Command-line flags and per-run setup shared by `train_net.py`, `atrous train` and friends.

The flags are detectron2's (`default_argument_parser`), so the seed's command lines work verbatim.
`default_setup` prepares one process of a run: output directory (checked, locked, and guarded
against mixing a fresh run into an old one, see `atrous.engine.output_dir`), log file, seed, the
resolved config next to the results, and a record of the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import random
import sys
from typing import Any

import numpy as np
import torch

from atrous.config import resolve_config_file
from atrous.utils import comm
from atrous.utils.devices import apply_float32_precision
from atrous.utils.file_io import atomic_write_text

from .output_dir import on_main_process, prepare_output_dir, previous_run_files

__all__ = [
    "add_train_arguments",
    "default_argument_parser",
    "default_setup",
    "log_exception_to_files",
    "seed_all_rng",
    "setup_logger",
]

_EPILOG = """\
Examples:

Run on a single machine:
    $ {prog} --num-gpus 8 --config-file cfg.yaml

Change some config options:
    $ {prog} --config-file cfg.yaml MODEL.WEIGHTS /path/to/weight.pth SOLVER.BASE_LR 0.001

Run on multiple machines:
    (machine0)$ {prog} --machine-rank 0 --num-machines 2 --dist-url tcp://HOST:PORT [--other-flags]
    (machine1)$ {prog} --machine-rank 1 --num-machines 2 --dist-url tcp://HOST:PORT [--other-flags]

Or start every process with torchrun (env:// rendezvous; --num-gpus is then ignored):
    $ torchrun --nproc-per-node 8 {prog} --config-file cfg.yaml
"""


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add detectron2's training flags to `parser`."""
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        action="store_true",
        help="resume from the last checkpoint in OUTPUT_DIR (model, optimizer, scheduler, "
        "iteration, RNG states, data position); without it, start from MODEL.WEIGHTS",
    )
    start.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an OUTPUT_DIR that holds a previous run: its files are moved to "
        "OUTPUT_DIR/previous/<time>/ (nothing is deleted); without it such a folder is refused",
    )
    parser.add_argument("--eval-only", action="store_true", help="perform evaluation only")
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="number of processes per machine (GPUs)"
    )
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument(
        "--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)"
    )
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="initialization URL for pytorch distributed backend, tcp://HOST:PORT; 'auto' picks "
        "a free local port (single machine only)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="on errors, also print the traceback (train also keeps it in OUTPUT_DIR/log.txt)",
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="Modify config options at the end of the command, as KEY VALUE pairs, e.g. "
        "SOLVER.BASE_LR 0.001 OUTPUT_DIR out/run1",
    )


def default_argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """detectron2's training argument parser."""
    prog = os.path.basename(sys.argv[0]) or "train_net.py"
    parser = argparse.ArgumentParser(
        epilog=epilog if epilog is not None else _EPILOG.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(parser)
    return parser


class _RankFilter(logging.Filter):
    """Prefix records with the rank in distributed runs, so interleaved lines stay readable."""

    def __init__(self, rank: int, world_size: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}] " if world_size > 1 else ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank_prefix = self.prefix
        return True


def setup_logger(output_dir: str | None = None, *, name: str = "atrous") -> logging.Logger:
    """Log `name` (and everything under it) to stdout, and on rank 0 to ``output_dir/log.txt``.

    Non-main ranks only print warnings and errors, so a multi-process run reads like one.
    Calling it again replaces the handlers it installed before.
    """
    rank, world_size = comm.get_rank(), comm.get_world_size()
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        if getattr(handler, "_atrous", False):
            logger.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter(
        "[%(asctime)s %(name)s]: %(rank_prefix)s%(message)s", datefmt="%m/%d %H:%M:%S"
    )
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    handlers: list[logging.Handler] = [console]
    if output_dir and rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, "log.txt"), encoding="utf-8")
        file_handler.setLevel(logging.DEBUG)
        handlers.append(file_handler)
    for handler in handlers:
        handler.setFormatter(fmt)
        handler.addFilter(_RankFilter(rank, world_size))
        handler._atrous = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger


def log_exception_to_files(error: BaseException, *, name: str = "atrous") -> None:
    """Write `error` with its traceback to the log files of `setup_logger` (not the console).

    The command line shows a one-line error; the traceback stays in ``log.txt`` for a bug report.
    An exception is written once, however many layers report it.
    """
    if getattr(error, "_atrous_logged", False):
        return
    logger = logging.getLogger(name)
    record = logger.makeRecord(
        logger.name,
        logging.ERROR,
        __file__,
        0,
        "%s: %s",
        (type(error).__name__, error),
        (type(error), error, error.__traceback__),
    )
    record.rank_prefix = ""
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    with contextlib.suppress(AttributeError):  # exceptions with __slots__
        error._atrous_logged = True  # type: ignore[attr-defined]


def seed_all_rng(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _collect_env() -> str:
    lines = [
        f"Python {sys.version.split()[0]} on {platform.platform()}",
        f"torch {torch.__version__}, numpy {np.__version__}",
        f"CPU threads: {torch.get_num_threads()}, cores: {os.cpu_count()}",
        f"CUDA available: {torch.cuda.is_available()}",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"GPU {i}: {torch.cuda.get_device_name(i)}")
    return "\n".join(lines)


def default_setup(cfg: Any, args: argparse.Namespace | None) -> int:
    """Prepare this process for a run described by `cfg`.

    Rank 0 checks that ``cfg.OUTPUT_DIR`` is writable and has room, locks it for the rest of the
    process (a second run on it is refused), and refuses a fresh training run in a folder that
    holds a previous one unless ``args.resume`` or ``args.overwrite`` (see
    `atrous.engine.output_dir`). Then it opens ``log.txt`` there, logs the command line, the
    environment and the config, writes the resolved ``config.yaml`` (``eval_config.yaml`` for an
    ``--eval-only`` run in a training run's folder, whose config stays; for ``--resume`` over a
    previous run the trainer writes it once the checkpoint is loaded), and seeds every
    generator: ``cfg.SEED + rank`` when ``cfg.SEED >= 0``, otherwise a random seed that is logged
    so the run can be repeated.

    Returns:
        The seed used by this process.

    Raises:
        OutputDirError: OUTPUT_DIR cannot be used (on every rank, with rank 0's message).
    """
    output_dir = cfg.OUTPUT_DIR
    rank = comm.get_rank()
    notes: list[str] = []
    if output_dir:
        notes = on_main_process(
            lambda: prepare_output_dir(
                output_dir,
                resume=bool(getattr(args, "resume", False)),
                overwrite=bool(getattr(args, "overwrite", False)),
                eval_only=bool(getattr(args, "eval_only", False)),
            ),
            [],
        )
    logger = setup_logger(output_dir)
    for note in notes:
        logger.warning(note)
    logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    logger.info("Environment info:\n%s", _collect_env())
    if args is not None:
        logger.info("Command line arguments: %s", args)
        config_file = getattr(args, "config_file", "")
        if config_file:
            config_file = resolve_config_file(config_file)
            with open(config_file, encoding="utf-8") as f:
                logger.info("Contents of args.config_file=%s:\n%s", config_file, f.read())
    if rank == 0 and output_dir:
        name = "config.yaml"
        previous = previous_run_files(output_dir)
        if getattr(args, "eval_only", False) and previous:
            name = "eval_config.yaml"  # the training run's config.yaml describes its results
        if getattr(args, "resume", False) and previous and name == "config.yaml":
            # The run's config.yaml stays until its checkpoint is loaded and checked; then the
            # trainer writes the values the resumed run really uses (`Trainer.resume_or_load`).
            logger.info("config.yaml is written once the checkpoint to resume is loaded")
        else:
            path = os.path.join(output_dir, name)
            atomic_write_text(path, cfg.dump())
            logger.info("Full config saved to %s", os.path.abspath(path))

    if cfg.SEED >= 0:
        seed = int(cfg.SEED) + rank
        logger.info("Using seed %d (SEED %d + rank %d)", seed, cfg.SEED, rank)
    else:
        # One random base seed for the whole job (rank 0's), so the logged value repeats it.
        base = comm.all_gather_object(int.from_bytes(os.urandom(4), "little") % 2**30)[0]
        seed = base + rank
        logger.info(
            "SEED < 0: using the random seed %d + rank %d (pass SEED %d to repeat this run)",
            base,
            rank,
            base,
        )
    seed_all_rng(seed)

    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
    if cfg.FLOAT32_PRECISION:
        logger.info("FLOAT32_PRECISION %s", cfg.FLOAT32_PRECISION)
        apply_float32_precision(cfg.FLOAT32_PRECISION)
    return seed
