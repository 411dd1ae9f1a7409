"""`atrous train`: detectron2's ``train_net.py`` with the same flags.

atrous train --config-file cfg.yaml --num-gpus 8
atrous train --config-file cfg.yaml --eval-only MODEL.WEIGHTS /path/to/model_final.pkl
atrous train --config-file cfg.yaml --resume          # continue the run in OUTPUT_DIR
torchrun --nproc-per-node 8 -m atrous.cli.train --config-file cfg.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from atrous.config import CfgNode, ConfigError, get_cfg
from atrous.engine.defaults import add_train_arguments, default_setup
from atrous.engine.launch import default_backend, launch
from atrous.engine.preemption import EXIT_PREEMPTED, TrainingPreempted

__all__ = ["add_arguments", "main", "run", "setup"]

logger = logging.getLogger("atrous.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)


def load_config(args: argparse.Namespace) -> CfgNode:
    """The config named by ``--config-file`` with the trailing ``KEY VALUE`` overrides applied.

    Raises:
        ConfigError: no ``--config-file``, an unknown key or an odd number of override items.
        FileNotFoundError: the config file (or one of its ``_BASE_`` files) does not exist.
    """
    if not args.config_file:
        raise ConfigError(
            "No config given: pass --config-file FILE, e.g. "
            "--config-file configs/Synthetic/deeplab_v3_plus_R_50_quickstart.yaml"
        )
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(list(args.opts or []))
    cfg.freeze()
    return cfg


def setup(args: argparse.Namespace) -> CfgNode:
    cfg = load_config(args)
    default_setup(cfg, args)
    return cfg


def main(args: argparse.Namespace) -> Any:
    """Per-process entry point: evaluate (``--eval-only``) or train."""
    from atrous.engine.trainer import Trainer

    cfg = setup(args)
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


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Validate the command line, then run `main` in every process; returns the exit status.

    0: done; 1: training failed; 2: bad command line or config; 75 (`EXIT_PREEMPTED`): stopped
    by SIGTERM, SIGINT or SIGUSR1 after saving a checkpoint (continue with ``--resume``).
    """
    try:
        # Fail in the parent with one clear message rather than once per spawned process.
        cfg = load_config(args)
    except (ConfigError, FileNotFoundError) as error:
        _error(str(error))
        return 2
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
    except (ConfigError, FileNotFoundError, FloatingPointError, ValueError) as error:
        _error(str(error))
        return 1
    except Exception as error:
        # A spawned process failed: torch reports it with the child's traceback.
        from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

        if isinstance(error, (ProcessRaisedException, ProcessExitedException)):
            _error(f"a training process failed:\n{error}")
            return 1
        raise
    return 0


def cli(argv: list[str] | None = None) -> int:
    from atrous.engine.defaults import default_argument_parser

    return run(default_argument_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
