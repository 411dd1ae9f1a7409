"""Pascal VOC 2012 semantic segmentation.

Layout under the dataset root::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png      (palette PNG: index = class, 255 = border)
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt

Palette PNGs are read as their indices, so class k is label k and the object borders (255)
are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DatasetError
from ..metadata import Metadata, dataset_root, default_colors

__all__ = ["VOC_CLASSES"]

# fmt: off
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
# fmt: on


def load_voc_segmentation(root: str | os.PathLike, split: str, *, name: str) -> list[dict]:
    """Records of the images listed in ``ImageSets/Segmentation/<split>.txt``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"dataset {name!r}: root {root} does not exist. Download VOCtrainval_11-May-2012.tar "
            f"and extract it into the dataset root ({dataset_root()}), or set ATROUS_DATASETS."
        )
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise DatasetError(f"dataset {name!r}: split list {list_file} does not exist")
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"dataset {name!r}: {list_file} lists no images")
    records = []
    for image_id in ids:
        image = root / "JPEGImages" / f"{image_id}.jpg"
        label = root / "SegmentationClass" / f"{image_id}.png"
        for kind, path in (("image", image), ("label", label)):
            if not path.is_file():
                raise DatasetError(
                    f"dataset {name!r}: {kind} {path} (listed in {list_file}) does not exist"
                )
        records.append(
            {"file_name": str(image), "sem_seg_file_name": str(label), "image_id": image_id}
        )
    return records


def register_builtin(register) -> None:
    for split in ("train", "val"):
        name = f"voc_2012_sem_seg_{split}"

        def root() -> Path:
            return dataset_root() / "VOCdevkit" / "VOC2012"

        def records(name=name, split=split) -> list[dict]:
            return load_voc_segmentation(root(), split, name=name)

        def metadata(name=name) -> Metadata:
            return Metadata(
                name=name,
                stuff_classes=VOC_CLASSES,
                stuff_colors=default_colors(len(VOC_CLASSES)),
                ignore_label=255,
                evaluator_type="sem_seg",
                image_root=str(root() / "JPEGImages"),
                gt_root=str(root() / "SegmentationClass"),
            )

        register(name, records, metadata)
