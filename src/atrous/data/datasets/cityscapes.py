"""Cityscapes (fine annotations) and the synthetic street scenes stored in its layout.

Class names, colours and the id -> trainId mapping come from ``cityscapesscripts`` (the
official label table), never from a copy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cityscapesscripts.helpers.labels import labels as _CS_LABELS

from ..errors import DatasetError
from ..metadata import Metadata, dataset_root

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_COLORS",
    "cityscapes_metadata",
    "load_cityscapes_semantic",
]

_train_labels = sorted(
    (lab for lab in _CS_LABELS if 0 <= lab.trainId < 255), key=lambda lab: lab.trainId
)
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(lab.name for lab in _train_labels)
CITYSCAPES_COLORS: tuple[tuple[int, int, int], ...] = tuple(
    tuple(lab.color) for lab in _train_labels
)

_IMAGE_SUFFIX = "_leftImg8bit.png"
_SPLITS = ("train", "val", "test")


def cityscapes_metadata(name: str, root: Path, split: str) -> Metadata:
    return Metadata(
        name=name,
        stuff_classes=CITYSCAPES_CLASSES,
        stuff_colors=CITYSCAPES_COLORS,
        ignore_label=255,
        evaluator_type="cityscapes_sem_seg",
        image_root=str(root / "leftImg8bit" / split),
        gt_root=str(root / "gtFine" / split),
    )


def load_cityscapes_semantic(
    image_dir: str | os.PathLike, gt_dir: str | os.PathLike, *, how_to_get: str
) -> list[dict]:
    """Pair ``<city>/*_leftImg8bit.png`` images with their ``*_gtFine_labelTrainIds.png``.

    Only existence and pairing are checked here (fast even for all of Cityscapes); pixels are
    checked when the mapper reads them.

    Args:
        image_dir: ``leftImg8bit/<split>``.
        gt_dir: ``gtFine/<split>``.
        how_to_get: sentence appended to the "not found" error (how to obtain the data).

    Returns:
        Records sorted by file name with "file_name", "sem_seg_file_name", "image_id",
        "height", "width".

    Raises:
        DatasetError: missing folders, no images, images without labels.
    """
    image_dir, gt_dir = Path(image_dir), Path(gt_dir)
    if not image_dir.is_dir():
        raise DatasetError(f"image folder {image_dir} does not exist. {how_to_get}")
    images = sorted(
        entry.path
        for city in os.scandir(image_dir)
        if city.is_dir()
        for entry in os.scandir(city.path)
        if entry.name.endswith(_IMAGE_SUFFIX)
    )
    if not images:
        raise DatasetError(
            f"{image_dir} holds no <city>/*{_IMAGE_SUFFIX} images; the split is empty or the "
            f"layout is wrong. {how_to_get}"
        )
    if not gt_dir.is_dir():
        raise DatasetError(
            f"label folder {gt_dir} does not exist (images are in {image_dir}). {how_to_get}"
        )
    records, missing = [], []
    for image in images:
        city = os.path.basename(os.path.dirname(image))
        stem = os.path.basename(image)[: -len(_IMAGE_SUFFIX)]
        label = os.path.join(gt_dir, city, stem + "_gtFine_labelTrainIds.png")
        if not os.path.isfile(label):
            missing.append((image, label, os.path.join(gt_dir, city, stem)))
            continue
        records.append({"file_name": image, "sem_seg_file_name": label, "image_id": stem})
    if missing:
        image, label, base = missing[0]
        if os.path.isfile(base + "_gtFine_polygons.json") or os.path.isfile(
            base + "_gtFine_labelIds.png"
        ):
            root = gt_dir.parent.parent
            raise DatasetError(
                f"{len(missing)} of {len(images)} images in {image_dir} have no "
                f"*_gtFine_labelTrainIds.png (first: {label}), but the polygon/labelIds "
                f"annotations are there. Create the trainId label files with:\n"
                f"    atrous prepare cityscapes --root {root}"
            )
        raise DatasetError(
            f"{len(missing)} of {len(images)} images in {image_dir} have no label file "
            f"(first: image {image} expects {label}). {how_to_get}"
        )
    from ..image_io import image_size

    for r in records:
        r["height"], r["width"] = image_size(r["file_name"])
    return records


def _cityscapes_entry(name: str, split: str, subdir: str, how_to_get: Callable[[Path], str]):
    def root() -> Path:
        return dataset_root() / subdir

    def records() -> list[dict]:
        r = root()
        if not r.is_dir():
            raise DatasetError(f"dataset {name!r}: root {r} does not exist. {how_to_get(r)}")
        return load_cityscapes_semantic(
            r / "leftImg8bit" / split, r / "gtFine" / split, how_to_get=how_to_get(r)
        )

    def metadata() -> Metadata:
        return cityscapes_metadata(name, root(), split)

    return records, metadata


def _cityscapes_help(root: Path) -> str:
    return (
        "Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
        f"https://www.cityscapes-dataset.com and unzip both into {root}, then run "
        f"`atrous prepare cityscapes --root {root}`; or point ATROUS_DATASETS at the folder "
        "that contains cityscapes/."
    )


def _synthetic_help(root: Path) -> str:
    return (
        f"Generate it with `atrous prepare synthetic --output {root}` (or point ATROUS_DATASETS "
        "at the folder that contains synthetic/)."
    )


def register_builtin(register) -> None:
    for split in _SPLITS:
        name = f"cityscapes_fine_sem_seg_{split}"
        register(name, *_cityscapes_entry(name, split, "cityscapes", _cityscapes_help))
    for split in ("train", "val"):
        name = f"synthetic_sem_seg_{split}"
        register(name, *_cityscapes_entry(name, split, "synthetic", _synthetic_help))
