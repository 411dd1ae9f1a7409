"""ADE20K scene parsing (SceneParsing challenge, ``ADEChallengeData2016``).

Layout under the dataset root::

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/annotations/{training,validation}/*.png

The annotation PNGs store 0 for "other" and 1..150 for the classes. They are used as they are:
the records carry a lookup table (0 -> ignore 255, k -> k - 1) that the mapper applies, so no
converted copy of the annotations is needed (detectron2 writes one with a separate script).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..metadata import Metadata, dataset_root, default_colors
from .custom import pair_folders

__all__ = ["ADE20K_CLASSES", "ade20k_lut"]

# fmt: off
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
# fmt: on
assert len(ADE20K_CLASSES) == 150

_SPLIT_DIRS = {"train": "training", "val": "validation"}


def ade20k_lut() -> np.ndarray:
    """Stored value -> training label: 0 -> 255 (ignore), k -> k - 1."""
    lut = np.arange(65536, dtype=np.int64) - 1
    lut[0] = 255
    return lut.astype(np.uint16)


def register_builtin(register) -> None:
    for split, sub in _SPLIT_DIRS.items():
        name = f"ade20k_sem_seg_{split}"

        def root() -> Path:
            return dataset_root() / "ADEChallengeData2016"

        def records(name=name, sub=sub) -> list[dict]:
            r = root()
            if not r.is_dir():
                raise DatasetError(
                    f"dataset {name!r}: root {r} does not exist. Download ADEChallengeData2016.zip "
                    "(http://sceneparsing.csail.mit.edu) and unzip it into the dataset root "
                    f"({dataset_root()}), or set ATROUS_DATASETS."
                )
            recs = pair_folders(
                r / "images" / sub, r / "annotations" / sub, image_exts=(".jpg",),
                mask_ext=".png", what=f"dataset {name!r}",
            )  # fmt: skip
            lut = ade20k_lut()
            for rec in recs:
                rec["sem_seg_lut"] = lut
            return recs

        def metadata(name=name, sub=sub) -> Metadata:
            r = root()
            return Metadata(
                name=name,
                stuff_classes=ADE20K_CLASSES,
                stuff_colors=default_colors(len(ADE20K_CLASSES)),
                ignore_label=255,
                evaluator_type="sem_seg",
                image_root=str(r / "images" / sub),
                gt_root=str(r / "annotations" / sub),
            )

        register(name, records, metadata)
