"""`atrous evaluate`: evaluate a model on the config's test datasets.

atrous evaluate --config-file cfg.yaml MODEL.WEIGHTS model_final.pth
atrous evaluate --config-file cfg.yaml --tta --output out/eval MODEL.WEIGHTS DeepLabV3+_R103
atrous evaluate --model my_bundle --dataset cityscapes_fine_sem_seg_val
atrous evaluate --config-file cfg.yaml --model model.onnx
atrous evaluate --model quantized/model_int8.xml --precision bf16

For every dataset in DATASETS.TEST (or ``--dataset``) it writes, under
``<output>/inference/<dataset>/``, the metrics as JSON and CSV, the confusion matrix, the official
Cityscapes results for Cityscapes-style datasets, and ``report.html`` with charts and samples. All
results are also collected in ``<output>/inference/results.json``. A dataset named by a path
(``data/d.yaml:val``) gets a folder name without separators (``d.yaml_val-<hash>``).

The output folder is ``--output``; without it, OUTPUT_DIR of the ``--config-file`` (or of an
``OUTPUT_DIR`` override), and ``output/evaluate/<model name>`` under the current folder for a
``--model`` source: the ``config.yaml`` inside a bundle or beside an exported graph describes how
the model was made, not where this evaluation may write.

The output folder is locked while this runs: a training run or another evaluation writing there
is refused. One process; for several GPUs use ``atrous train --eval-only --num-gpus N``.

``--model`` also takes an exported graph (``.onnx`` through ONNX Runtime, OpenVINO ``.xml``; INT8
files too), with the config from ``--config-file`` or the ``config.yaml`` beside it: it runs
through the same data loader, TEST.AUG / TEST.SLIDING_WINDOW wrappers and evaluators as the
PyTorch model, on the CPU (TEST.FAST, which rewrites a PyTorch model, is refused). See
`atrous.deploy.runtime`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from atrous.cli.common import (
    ModelSource,
    add_allow_partial_flag,
    add_device_flag,
    add_model_source_flags,
    add_overrides_argument,
    add_precision_flag,
    build_run_model,
    load_model_source,
    setup_logging,
)

__all__ = ["add_arguments", "run"]

logger = logging.getLogger("atrous.evaluate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_source_flags(parser)
    parser.add_argument(
        "--output",
        default=None,
        metavar="DIR",
        help="output folder (default: OUTPUT_DIR of --config-file; output/evaluate/<name> in the "
        "current folder for --model)",
    )
    parser.add_argument(
        "--dataset",
        action="append",
        default=None,
        metavar="NAME",
        help="dataset to evaluate instead of DATASETS.TEST (repeatable)",
    )
    add_device_flag(parser)
    parser.add_argument(
        "--tta", action="store_true", help="test-time augmentation (TEST.AUG scales and flips)"
    )
    add_precision_flag(parser)
    add_allow_partial_flag(parser)
    add_overrides_argument(parser, example="MODEL.WEIGHTS model.pth")


def _format(results: dict) -> str:
    lines = []
    for task, metrics in results.items():
        summary = {k: v for k, v in metrics.items() if "-" not in k}
        values = "  ".join(
            f"{k} {'nan' if isinstance(v, float) and math.isnan(v) else f'{v:.2f}'}"
            for k, v in summary.items()
        )
        lines.append(f"{task}: {values}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate; returns 0 on success. Errors are reported by `atrous.cli.main.dispatch`.

    Everything that can be checked without the model runs first: the config, the output folder
    (writable, not in use) and the dataset names; every dataset's loader and evaluator are built
    before the first inference (`evaluate_datasets`), so that a mistake surfaces in seconds rather
    than after a whole inference.
    """
    setup_logging()
    from atrous.config import ConfigError
    from atrous.config.validate import validate_config

    source = load_model_source(args, device=args.device)
    cfg = source.cfg
    if source.exported is not None and not args.device:
        cfg.MODEL.DEVICE = "cpu"  # where exported graphs run
    if args.device:
        cfg.MODEL.DEVICE = args.device
    if args.tta:
        cfg.TEST.AUG.ENABLED = True
    datasets = list(args.dataset or cfg.DATASETS.TEST)
    if not datasets:
        raise ConfigError("No dataset to evaluate: set DATASETS.TEST or pass --dataset NAME.")
    cfg.freeze()
    validate_config(cfg)

    from atrous.data import check_datasets
    from atrous.utils.folders import OutputDirLock, check_writable

    # Every name resolves before the model is built; a bad second dataset fails at once.
    check_datasets(
        datasets,
        key="--dataset" if args.dataset else "DATASETS.TEST",
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
    )
    output, label = output_folder(args, cfg)
    check_writable(output, label=label)
    lock = OutputDirLock(output)
    note = lock.acquire()
    if note:
        logger.warning(note)
    try:
        return _evaluate(cfg, datasets, Path(output) / "inference", source, args)
    finally:
        lock.release()


def output_folder(args: argparse.Namespace, cfg: Any) -> tuple[str, str]:
    """(where this evaluation writes, how the message names it).

    ``--output``, else an ``OUTPUT_DIR`` given on the command line or in ``--config-file``; a
    ``--model`` source without either writes to ``output/evaluate/<its name>`` in the current
    folder, never where the model's own config.yaml points.
    """
    if args.output:
        return args.output, "--output"
    opts = list(args.opts or [])
    if "OUTPUT_DIR" in opts[::2] or not args.model:
        return cfg.OUTPUT_DIR, "OUTPUT_DIR"
    model = Path(os.path.abspath(args.model))
    name = (model.name if model.is_dir() else model.stem) or "model"
    return os.path.join("output", "evaluate", name), "the default output folder"


def _evaluate(
    cfg, datasets: list[str], out_root: Path, source: ModelSource, args: argparse.Namespace
) -> int:
    """Build (or take the bundle's, or open the exported) model, evaluate, write results.json."""
    from atrous.evaluation import evaluate_datasets
    from atrous.inference import build_inference_model
    from atrous.utils.file_io import atomic_write_json

    model = build_run_model(source, allow_partial=args.allow_partial, precision=args.precision)
    all_results = evaluate_datasets(
        cfg, build_inference_model(cfg, model.eval()), datasets, out_root
    )
    for name, results in all_results.items():
        print(f"{name}\n{_format(results)}")
    atomic_write_json(out_root / "results.json", all_results)
    print(f"results written to {out_root}", file=sys.stderr)
    return 0


def cli(argv: list[str] | None = None) -> int:
    from atrous.cli.main import main

    return main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(cli())
