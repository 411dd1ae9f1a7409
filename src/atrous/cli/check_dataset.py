"""`atrous check-dataset`: read every image and label of a dataset once and report what is wrong.

Examples::

    atrous check-dataset data/cracks.yaml:train
    atrous check-dataset cityscapes_fine_sem_seg_train --workers 8 --output reports/cs_train

Training checks each file only when it is drawn; this is the thorough pass. It reports
unreadable files, image/label size mismatches, label values outside the classes, unlisted
colours (colour-coded masks), empty masks (all ignored), duplicate images (same file content)
and duplicate entries, each naming the file; prints a per-class table (share of labelled
pixels, images containing the class, suggested class weights: median-frequency balancing and
inverse square-root frequency, see `atrous.data.statistics`); and writes
``dataset_report.json`` and ``class_frequency.png`` into ``--output``.

Exit status: 0 no defect found, 1 defects found (or the dataset cannot be listed at all),
2 a bad command line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset",
        metavar="NAME_OR_YAML[:split]",
        help="a registered or builtin dataset name, or a dataset YAML file (with ':split' "
        "when it has several)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        metavar="N",
        help="worker processes reading the files (0: in this process; default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        default=None,
        metavar="DIR",
        help="folder for dataset_report.json and class_frequency.png (default: "
        "dataset_check/<dataset name>, e.g. dataset_check/cracks.yaml_train)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        metavar="N",
        help="refuse files with more pixels (INPUT.MAX_IMAGE_PIXELS; default: Pillow's limit, "
        "0: none)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def default_output(dataset: str) -> Path:
    """``dataset_check/<name>``: a YAML file's name (and split), made safe for a folder."""
    name = os.path.basename(dataset.rstrip("/\\")) or dataset
    return Path("dataset_check") / (re.sub(r"[^\w.-]+", "_", name).strip("_.") or "dataset")


def run(args: argparse.Namespace) -> int:
    from atrous.config import ConfigError
    from atrous.data import DEFAULT_MAX_IMAGE_PIXELS, get_dataset_records, get_metadata
    from atrous.data.statistics import (
        WEIGHT_DEFINITIONS,
        compute_statistics,
        format_class_table,
        write_report,
    )

    if args.workers < 0:
        raise ConfigError("--workers must be 0 or more")
    with contextlib.suppress(Exception):  # the report names corrupt files; OpenCV's log repeats
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    meta = get_metadata(args.dataset)
    records = get_dataset_records(args.dataset, read_sizes=False)
    max_pixels = (
        DEFAULT_MAX_IMAGE_PIXELS if args.max_image_pixels is None else args.max_image_pixels
    )
    print(f"checking {args.dataset}: {len(records)} images, {meta.num_classes} classes")
    stats = compute_statistics(
        records,
        class_names=meta.stuff_classes,
        ignore_label=meta.ignore_label,
        workers=args.workers,
        max_pixels=max_pixels,
        progress=not args.no_progress,
        description="check-dataset",
    )
    output = Path(args.output) if args.output else default_output(args.dataset)
    written = write_report(stats, output, dataset=args.dataset)

    print()
    print(format_class_table(stats))
    print(
        f"{stats.labelled_pixels:,} labelled and {stats.ignored_pixels:,} ignored pixels; "
        "pixels % = share of labelled pixels"
    )
    print("suggested class weights (MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS):")
    for key, text in WEIGHT_DEFINITIONS.items():
        print(f"  {key}: {text}")
    absent = [n for n, p in zip(stats.class_names, stats.pixels, strict=True) if not p]
    if absent:
        print(f"classes without any labelled pixel: {', '.join(absent)}")
    print(f"report: {written['report']}\nchart:  {written['chart']}")
    if not stats.problems:
        print(f"no defects found in {stats.num_images} images")
        return 0
    print()
    for p in stats.problems:
        print(f"[{p['kind']}] {p['message']}")
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(stats.problem_counts().items()))
    files = len({p["file"] for p in stats.problems})
    print(
        f"\n{len(stats.problems)} defects in {files} files ({counts}); fix or remove them, then "
        "run check-dataset again",
        file=sys.stderr,
    )
    return 1
