"""`atrous train`: detectron2's ``train_net.py`` with the same flags.

atrous train --config-file cfg.yaml --num-gpus 8
atrous train --config-file cfg.yaml --eval-only MODEL.WEIGHTS /path/to/model_final.pkl
atrous train --config-file cfg.yaml --resume          # continue the run in OUTPUT_DIR
atrous train --config-file cfg.yaml --overwrite       # start afresh; the old run goes to previous/
torchrun --nproc-per-node 8 -m atrous.cli.train --config-file cfg.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from atrous.cli import common
from atrous.config import CfgNode, ConfigError
from atrous.config.validate import validate_config
from atrous.engine.defaults import add_train_arguments, default_setup
from atrous.engine.launch import default_backend, launch, process_counts
from atrous.engine.preemption import EXIT_PREEMPTED, TrainingPreempted

__all__ = ["add_arguments", "main", "run", "setup"]

logger = logging.getLogger("atrous.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)


def world_size(args: argparse.Namespace) -> int:
    """Processes of the run: torchrun's or SLURM's, else ``--num-gpus x --num-machines``."""
    return process_counts(int(args.num_gpus), int(args.num_machines))[0]


def _check_launch_flags(args: argparse.Namespace) -> None:
    # `launch` checks these too, as ValueErrors; here they are usage errors of the command line.
    for flag, value in (("--num-gpus", args.num_gpus), ("--num-machines", args.num_machines)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}.")
    if not 0 <= args.machine_rank < args.num_machines:
        raise ConfigError(
            f"--machine-rank must lie in [0, {args.num_machines}), got {args.machine_rank}."
        )
    if args.num_machines > 1 and args.dist_url in (None, "auto"):
        raise ConfigError(
            "--dist-url auto only works on one machine; pass tcp://HOST:PORT of machine 0 to "
            "every machine."
        )


def load_config(args: argparse.Namespace) -> CfgNode:
    """The config named by ``--config-file`` with the trailing ``KEY VALUE`` overrides applied,
    checked by `validate_config` for this run's number of processes.

    Raises:
        ConfigError: no ``--config-file``, an unknown key, an odd number of override items, or a
            value that cannot work (see `validate_config`).
        FileNotFoundError: the config file (or one of its ``_BASE_`` files) does not exist.
    """
    if not args.config_file:
        raise ConfigError(
            "No config given: pass --config-file FILE, e.g. "
            "--config-file configs/Synthetic/deeplab_v3_plus_R_50_quickstart.yaml"
        )
    cfg = common.load_config(args.config_file, args.opts or [])
    cfg.freeze()
    _check_launch_flags(args)
    processes, per_machine = process_counts(int(args.num_gpus), int(args.num_machines))
    validate_config(
        cfg,
        world_size=processes,
        processes_per_machine=per_machine,
        training=not args.eval_only,
    )
    return cfg


def setup(args: argparse.Namespace) -> CfgNode:
    cfg = load_config(args)
    default_setup(cfg, args)
    return cfg


def main(args: argparse.Namespace) -> Any:
    """Per-process entry point: evaluate (``--eval-only``) or train."""
    from atrous.engine.output_dir import release_output_dir

    cfg = load_config(args)
    try:
        default_setup(cfg, args)
        return _evaluate_or_train(cfg, args)
    finally:
        release_output_dir(cfg.OUTPUT_DIR)


def _evaluate_or_train(cfg: CfgNode, args: argparse.Namespace) -> Any:
    from atrous.engine.trainer import Trainer

    if args.eval_only:
        from atrous.checkpoint import Checkpointer
        from atrous.modeling import build_model

        model = build_model(cfg)
        Checkpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        if not cfg.DATASETS.TEST:
            raise ConfigError("--eval-only needs DATASETS.TEST to name at least one dataset.")
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(args: argparse.Namespace) -> int:
    """Validate the command line, then run `main` in every process; returns the exit status.

    0: done; 1: training failed; 2: bad command line or config; 75 (`EXIT_PREEMPTED`): stopped
    by SIGTERM, SIGINT or SIGUSR1 after saving a checkpoint (continue with ``--resume``).

    The config is loaded and checked here, in the parent, so that a mistake is reported once
    rather than once per spawned process. Errors are turned into messages by
    `atrous.cli.main.dispatch`; a spawned process's error is re-raised here by `launch`.
    """
    from atrous.engine.trainer import check_config_datasets

    cfg = load_config(args)
    # Names and class counts, found here rather than by every process (or after a whole
    # training); the trainer also checks the test files once the run has started.
    check_config_datasets(cfg, train=not args.eval_only, records=False)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            backend=default_backend(cfg.MODEL.DEVICE),
        )
    except TrainingPreempted:
        # Rank 0 logged where it stopped and what it saved; the status asks for a retry.
        return EXIT_PREEMPTED
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``train_net.py`` / ``python -m atrous.cli.train``: detectron2's parser, atrous's errors."""
    from atrous.cli.main import dispatch
    from atrous.engine.defaults import default_argument_parser

    return dispatch(run, default_argument_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
