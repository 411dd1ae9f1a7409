"""``atrous prepare``: get datasets into the layout the loaders read.

atrous prepare cityscapes [--root DIR] [--workers N] [--force]
    Create gtFine/*/*/*_gtFine_labelTrainIds.png from the polygon annotations with
    cityscapesscripts' rasteriser (what its createTrainIdLabelImgs does), in parallel.
atrous prepare synthetic [--output DIR] [--num-train N] [--num-val M] [--size HxW]
                         [--seed S] [--workers N]
    Generate the synthetic street-scene dataset in the Cityscapes layout.
"""

from __future__ import annotations

import argparse
import glob
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..data.catalog import dataset_root
from ..data.errors import DatasetError
from .common import parse_size

__all__ = ["add_arguments", "convert_cityscapes", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    cs = sub.add_parser("cityscapes", help="create *_gtFine_labelTrainIds.png from the polygons")
    cs.add_argument(
        "--root",
        default=None,
        help="Cityscapes folder holding gtFine/ (default: $ATROUS_DATASETS/cityscapes)",
    )
    cs.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    cs.add_argument("--force", action="store_true", help="rewrite existing label files")
    syn = sub.add_parser("synthetic", help="generate the synthetic street-scene dataset")
    syn.add_argument(
        "--output", default=None, help="dataset folder (default: $ATROUS_DATASETS/synthetic)"
    )
    syn.add_argument("--num-train", type=int, default=200)
    syn.add_argument("--num-val", type=int, default=50)
    syn.add_argument("--size", type=parse_size, default="256x512", help="HxW of every image")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")


def _convert_one(task: tuple[str, str]) -> None:
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    src, dst = task
    annotation = Annotation()
    annotation.fromJsonFile(src)
    image = createLabelImage(annotation, "trainIds")
    tmp = dst + ".tmp"
    # Written aside and renamed, so an interrupted run leaves no truncated label file.
    image.save(tmp, format="PNG")
    os.replace(tmp, dst)


def convert_cityscapes(
    root: str | os.PathLike, *, workers: int = 1, force: bool = False, progress: bool = True
) -> int:
    """Rasterise every ``gtFine/<split>/<city>/*_gtFine_polygons.json`` to trainId PNGs.

    Returns:
        Number of files written.

    Raises:
        FileNotFoundError: no polygon files under ``root/gtFine``.
    """
    root = Path(root)
    files = sorted(glob.glob(str(root / "gtFine" / "*" / "*" / "*_gt*_polygons.json")))
    if not files:
        raise FileNotFoundError(
            f"no gtFine/<split>/<city>/*_gtFine_polygons.json under {root}. Unzip "
            "gtFine_trainvaltest.zip there (or pass --root to the folder that holds gtFine/)."
        )
    tasks = []
    for f in files:
        dst = f[: -len("_polygons.json")] + "_labelTrainIds.png"
        if force or not os.path.isfile(dst):
            tasks.append((f, dst))
    if not tasks:
        return 0
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc="labelTrainIds", unit="file", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_convert_one, tasks, chunksize=8):
                bar.update()
    else:
        for task in tasks:
            _convert_one(task)
            bar.update()
    bar.close()
    return len(tasks)


def run(args: argparse.Namespace) -> int:
    if args.dataset == "cityscapes":
        root = Path(args.root) if args.root else dataset_root() / "cityscapes"
        try:
            n = convert_cityscapes(root, workers=max(1, args.workers), force=args.force)
        except FileNotFoundError as error:
            # Missing polygons are a data problem (exit status 1), not a path typed wrong.
            raise DatasetError(str(error)) from error
        print(f"wrote {n} *_gtFine_labelTrainIds.png files under {root / 'gtFine'}")
        return 0
    from ..data.datasets.synthetic import generate_dataset

    output = Path(args.output) if args.output else dataset_root() / "synthetic"
    size = args.size
    try:
        generate_dataset(
            output,
            num_train=args.num_train,
            num_val=args.num_val,
            size=size,
            seed=args.seed,
            num_workers=max(0, args.workers) if args.workers > 1 else 0,
            progress=True,
        )
    except ValueError as error:
        # A folder it may not write or a size it cannot draw: the run fails (exit status 1).
        raise DatasetError(str(error)) from error
    print(
        f"synthetic dataset in {output}: {args.num_train} train + {args.num_val} val images of "
        f"{size[0]}x{size[1]} (seed {args.seed})"
    )
    return 0
