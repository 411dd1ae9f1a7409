"""`atrous evaluate`: evaluate a model on the config's test datasets.

atrous evaluate --config-file cfg.yaml MODEL.WEIGHTS model_final.pth
atrous evaluate --config-file cfg.yaml --tta --output out/eval MODEL.WEIGHTS DeepLabV3+_R103

For every dataset in DATASETS.TEST (or ``--dataset``) it writes, under
``<output>/inference/<dataset>/``, the metrics as JSON and CSV, the confusion matrix, the official
Cityscapes results for Cityscapes-style datasets, and ``report.html`` with charts and samples. All
results are also collected in ``<output>/inference/results.json``.

One process; for several GPUs use ``atrous train --eval-only --num-gpus N`` (same evaluators).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from atrous.cli.common import add_allow_partial_flag, check_dataset_classes, load_weights

__all__ = ["add_arguments", "run"]

logger = logging.getLogger("atrous.evaluate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    parser.add_argument(
        "--output", default=None, metavar="DIR", help="output folder (default: OUTPUT_DIR)"
    )
    parser.add_argument(
        "--dataset",
        action="append",
        default=None,
        metavar="NAME",
        help="dataset to evaluate instead of DATASETS.TEST (repeatable)",
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="overrides MODEL.DEVICE"
    )
    parser.add_argument(
        "--tta", action="store_true", help="test-time augmentation (TEST.AUG scales and flips)"
    )
    add_allow_partial_flag(parser)
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=None,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth",
    )


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
    (writable), the datasets and their evaluators, so that a mistake surfaces in seconds rather
    than after a whole inference.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    from atrous.config import ConfigError, get_cfg
    from atrous.config.validate import validate_config

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(list(args.opts or []))
    if args.device:
        cfg.MODEL.DEVICE = args.device
    if args.tta:
        cfg.TEST.AUG.ENABLED = True
    datasets = list(args.dataset or cfg.DATASETS.TEST)
    if not datasets:
        raise ConfigError("No dataset to evaluate: set DATASETS.TEST or pass --dataset NAME.")
    cfg.freeze()
    validate_config(cfg)
    check_dataset_classes(cfg, test=tuple(datasets))

    from atrous.data import build_test_loader
    from atrous.evaluation import build_evaluator, inference_on_dataset
    from atrous.inference import build_inference_model
    from atrous.modeling import build_model
    from atrous.utils.file_io import atomic_write_json, check_writable_dir

    out_root = check_writable_dir(Path(args.output or cfg.OUTPUT_DIR) / "inference")
    jobs = [
        (name, build_test_loader(cfg, name), build_evaluator(cfg, name, out_root / name))
        for name in datasets
    ]
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS, allow_partial=args.allow_partial)
    else:
        logger.warning("MODEL.WEIGHTS is empty: evaluating untrained weights")
    inference_model = build_inference_model(cfg, model.eval())
    all_results = {}
    for name, loader, evaluator in jobs:
        results = inference_on_dataset(inference_model, loader, evaluator)
        all_results[name] = results
        print(f"{name}\n{_format(results)}")
    atomic_write_json(out_root / "results.json", all_results)
    print(f"results written to {out_root}", file=sys.stderr)
    return 0


def cli(argv: list[str] | None = None) -> int:
    from atrous.cli.main import main

    return main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(cli())
