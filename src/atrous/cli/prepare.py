"""``atrous prepare``: get datasets into the layout the loaders read.

atrous prepare cityscapes [--root DIR] [--workers N] [--force]
    Create gtFine/*/*/*_gtFine_labelTrainIds.png from the polygon annotations with
    cityscapesscripts' rasteriser (what its createTrainIdLabelImgs does), in parallel.
atrous prepare synthetic [--output DIR] [--num-train N] [--num-val M] [--size HxW]
                         [--seed S] [--workers N]
    Generate the synthetic street-scene dataset in the Cityscapes layout.
atrous prepare coco|labelme|cvat SRC [SRC ...] --output DIR [--images DIR] [--classes LIST]
                                 [--background NAME] [--val-fraction F] [--seed S]
    Turn an annotation tool's export into DIR/dataset.yaml with images/ and class-id masks/
    (`atrous.data.importers`), then check every split as `atrous check-dataset` does.
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
    for fmt, what in _EXPORTS.items():
        _add_export_arguments(sub.add_parser(fmt, help=f"convert {what}"), fmt)


_EXPORTS = {
    "coco": "COCO instances JSON (polygons, RLE) into class-id masks",
    "labelme": "a folder of LabelMe JSON files into class-id masks",
    "cvat": "a CVAT export (Segmentation mask 1.1 or CVAT for images 1.1) into class-id masks",
}
_SOURCES = {
    "coco": "instances_*.json files (several: one split each), or folders or zips holding them",
    "labelme": "folder (or zip) of LabelMe .json files; subfolders train/, val/ become splits",
    "cvat": "export folder or zip (labelmap.txt + SegmentationClass/, or annotations.xml)",
}


def _add_export_arguments(p: argparse.ArgumentParser, fmt: str) -> None:
    p.add_argument("src", nargs="+" if fmt == "coco" else None, metavar="SRC", help=_SOURCES[fmt])
    p.add_argument("--output", required=True, metavar="DIR", help="new folder for the dataset")
    p.add_argument("--images", metavar="DIR", help="folder holding the images, if not the export")
    if fmt == "labelme":
        p.add_argument(
            "--classes",
            metavar="FILE_OR_LIST",
            help="labels.txt (one name a line, labelme2voc's format) or 'a,b,c' (default: "
            "_background_ and the labels seen, sorted)",
        )
    else:
        p.add_argument(
            "--background",
            metavar="NAME",
            help="class of the pixels no annotation covers, added as class 0 (default: ignored)",
        )
    p.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="for exports without splits: move this share of the images to split 'val'",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --val-fraction's split")
    p.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="check-dataset's processes"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


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


def _run_import(args: argparse.Namespace) -> int:
    # Bad input raises a DatasetError naming the file and annotation; the dispatcher prints it.
    from ..data.importers import import_export, read_classes
    from . import check_dataset

    classes = read_classes(args.classes) if getattr(args, "classes", None) else None
    result = import_export(
        args.dataset,
        args.src if isinstance(args.src, list) else [args.src],
        args.output,
        images=args.images,
        classes=classes,
        background=getattr(args, "background", None),
        val_fraction=args.val_fraction,
        seed=args.seed,
        progress=not args.no_progress,
    )
    splits = ", ".join(f"{n} {name}" for name, n in result.splits.items())
    print(f"wrote {result.yaml_path}: {len(result.classes)} classes, {splits} images")
    for note in result.notes:
        print(f"note: {note}")
    status = 0
    for split in result.splits:
        check = argparse.Namespace(
            dataset=f"{result.yaml_path}:{split}",
            workers=args.workers,
            output=str(Path(args.output) / "dataset_check" / split),
            max_image_pixels=None,
            no_progress=args.no_progress,
        )
        status = max(status, check_dataset.run(check))
    train = next(iter(result.splits))
    test = next((s for s in result.splits if s.startswith(("val", "test"))), train)
    print(
        "\ntrain on it with: atrous train --config-file CONFIG DATASETS.TRAIN "
        f"'(\"{result.yaml_path}:{train}\",)' DATASETS.TEST '(\"{result.yaml_path}:{test}\",)' "
        f"MODEL.SEM_SEG_HEAD.NUM_CLASSES {len(result.classes)}"
    )
    return status


def run(args: argparse.Namespace) -> int:
    if args.dataset in _EXPORTS:
        return _run_import(args)
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
