"""`atrous quickstart`: the whole job on the built-in synthetic street scenes, on a CPU.

1. writes the synthetic dataset (Cityscapes layout) under ``$ATROUS_DATASETS/synthetic``;
2. trains ``configs/Synthetic/deeplab_v3_plus_R_50_quickstart.yaml`` from scratch;
3. evaluates the final model on the validation split (official Cityscapes script + mIoU table);
4. writes prediction pictures (photo | prediction | ground truth) for a few validation images.

Everything lands in OUTPUT_DIR (default ``output/quickstart``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from atrous.checkpoint.best import describe_weights
from atrous.cli.common import add_overrides_argument, build_model_and_load, parse_size

__all__ = ["add_arguments", "find_config", "run"]

logger = logging.getLogger("atrous.quickstart")

CONFIG_NAME = "Synthetic/deeplab_v3_plus_R_50_quickstart.yaml"


def find_config(name: str = CONFIG_NAME) -> Path:
    """The shipped quickstart config (part of the package, so any install has it)."""
    from atrous.config import get_config_file

    return Path(get_config_file(name))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-file", default="", metavar="FILE", help=f"config (default: configs/{CONFIG_NAME})"
    )
    parser.add_argument("--num-train", type=int, default=300, help="synthetic training images")
    parser.add_argument("--num-val", type=int, default=50, help="synthetic validation images")
    parser.add_argument(
        "--size",
        type=parse_size,
        default="256x512",
        help="synthetic image size HxW (default 256x512)",
    )
    parser.add_argument("--num-pictures", type=int, default=8, help="prediction pictures to write")
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="training processes (GPUs; CPU processes on CPU)"
    )
    add_overrides_argument(parser, example="SOLVER.MAX_ITER 300 MODEL.DEVICE cuda")


def _train_args(config_file: str, num_gpus: int, opts: list[str]) -> argparse.Namespace:
    # A demo that is rerun by design: a previous quickstart in OUTPUT_DIR is moved aside to
    # OUTPUT_DIR/previous/<time>/ (never deleted) rather than refused.
    return argparse.Namespace(
        config_file=config_file,
        resume=False,
        overwrite=True,
        eval_only=False,
        num_gpus=num_gpus,
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
        opts=opts,
    )


def write_pictures(
    cfg: Any, weights: str, dataset_name: str, out_dir: Path, count: int
) -> list[Path]:
    """Segment the first `count` images of a dataset; save photo | prediction | ground truth."""
    import numpy as np

    from atrous.data import get_dataset_records, get_metadata, load_sem_seg, read_image
    from atrous.inference import Predictor
    from atrous.inference.writer import comparison_picture, write_picture

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    predictor = Predictor(cfg, model=build_model_and_load(cfg, allow_partial=False))
    meta = get_metadata(dataset_name)
    colors = [tuple(c) for c in meta.stuff_colors]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for record in get_dataset_records(dataset_name)[:count]:
        photo = np.ascontiguousarray(read_image(record["file_name"], "RGB"))
        labels = predictor(photo).labels
        gt = None
        gt_file = record.get("sem_seg_file_name")
        if gt_file and os.path.exists(gt_file):
            gt = load_sem_seg(record).astype(np.int64)
            gt = np.where(gt == meta.ignore_label, -1, gt)
        name = Path(record["file_name"]).stem.replace("_leftImg8bit", "") + "_prediction.png"
        picture = comparison_picture(photo, labels, colors, ground_truth=gt)
        written.append(write_picture(out_dir / name, picture))
    return written


def _print_resume_command(config_file: str, opts: list[str], *, output_dir: str) -> None:
    """Tell on stderr how to continue a stopped training (into the same OUTPUT_DIR)."""
    resume = ["atrous", "train", "--config-file", config_file, "--resume", *opts]
    if "OUTPUT_DIR" not in opts:
        resume += ["OUTPUT_DIR", output_dir]
    print(
        "Training stopped with a checkpoint; continue it with: " + shlex.join(resume),
        file=sys.stderr,
    )


def _final_metrics(metrics_path: Path) -> dict[str, float]:
    """The last value of every ``sem_seg/*`` key in a ``metrics.json`` (JSON lines), or {}."""
    final: dict[str, float] = {}
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            record = json.loads(line)
            final.update({k: v for k, v in record.items() if k.startswith("sem_seg/")})
    return final


def _weights_to_show(output_dir: Path) -> Path:
    """The best checkpoint when training kept one (SOLVER.BEST_CHECKPOINT), else the final."""
    from atrous.checkpoint.best import BEST_FILE

    best = output_dir / BEST_FILE
    return best if best.is_file() else output_dir / "model_final.pth"


def run(args: argparse.Namespace) -> int:
    """``atrous quickstart``: synthetic dataset, training, validation mIoU, pictures."""
    from atrous.cli.train import load_config
    from atrous.cli.train import main as train_main
    from atrous.data.catalog import dataset_root
    from atrous.data.datasets.synthetic import generate_dataset
    from atrous.engine.launch import default_backend, launch
    from atrous.engine.preemption import EXIT_PREEMPTED, TrainingPreempted

    config_file = args.config_file or str(find_config())
    size = args.size
    train_args = _train_args(config_file, args.num_gpus, list(args.opts or []))
    cfg = load_config(train_args)

    root = Path(dataset_root()) / "synthetic"
    print(
        f"[1/4] Synthetic dataset: {args.num_train} train + {args.num_val} val images of "
        f"{size[0]}x{size[1]} in {root}",
        flush=True,
    )
    generate_dataset(
        root,
        num_train=args.num_train,
        num_val=args.num_val,
        size=size,
        seed=0,
        num_workers=min(4, os.cpu_count() or 1),
        progress=True,
    )

    print(
        f"[2/4] Training {config_file} for {cfg.SOLVER.MAX_ITER} iterations -> {cfg.OUTPUT_DIR}",
        flush=True,
    )
    # The final evaluation (step 3) is the trainer's last hook, on the validation split.
    try:
        launch(
            train_main,
            args.num_gpus,
            dist_url="auto",
            args=(train_args,),
            backend=default_backend(cfg.MODEL.DEVICE),
        )
    except TrainingPreempted:
        _print_resume_command(config_file, train_args.opts, output_dir=cfg.OUTPUT_DIR)
        return EXIT_PREEMPTED

    miou = _final_metrics(Path(cfg.OUTPUT_DIR) / "metrics.json").get("sem_seg/mIoU")
    print(
        f"[3/4] Validation mIoU: {miou:.2f}"
        if miou is not None
        else "[3/4] No evaluation result found (DATASETS.TEST empty?)",
        flush=True,
    )

    weights = _weights_to_show(Path(cfg.OUTPUT_DIR))
    pictures = Path(cfg.OUTPUT_DIR) / "predictions"
    written = (
        write_pictures(cfg, str(weights), cfg.DATASETS.TEST[0], pictures, args.num_pictures)
        if cfg.DATASETS.TEST and args.num_pictures > 0
        else []
    )
    print(
        f"[4/4] Wrote {len(written)} prediction pictures to {pictures}, with the weights of "
        f"{describe_weights(weights)}",
        flush=True,
    )
    print(f"Done. Training curves: {Path(cfg.OUTPUT_DIR) / 'training_curves.png'}")
    return 0
