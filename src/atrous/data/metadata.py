"""What the library knows about a dataset's labels: one type for data, evaluation and inference.

A leaf module: the catalog and the dataset modules (Cityscapes, ADE20K, VOC, YAML datasets)
build on it without importing each other.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DatasetError

__all__ = [
    "DatasetEntry",
    "Metadata",
    "as_metadata",
    "check_colors",
    "dataset_root",
    "default_colors",
]


@dataclass(frozen=True)
class Metadata:
    """What the rest of the library needs to know about a dataset's labels.

    Attributes:
        name: the dataset name.
        stuff_classes: class names, index = training label.
        stuff_colors: one RGB colour per class (for visualisation).
        ignore_label: training label of unlabelled pixels.
        evaluator_type: "sem_seg" (detectron2's SemSegEvaluator) or "cityscapes_sem_seg" (the
            official Cityscapes script on labelIds).
        image_root: folder of the split's images, when there is one.
        gt_root: folder of the split's label files, when there is one (for Cityscapes the
            ``gtFine/<split>`` folder that also holds ``*_gtFine_labelIds.png``).
        extra: anything else a dataset wants to expose.
    """

    name: str
    stuff_classes: tuple[str, ...]
    stuff_colors: tuple[tuple[int, int, int], ...]
    ignore_label: int = 255
    evaluator_type: str = "sem_seg"
    image_root: str | None = None
    gt_root: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.stuff_classes)

    # detectron2 spells the Cityscapes GT folder `gt_dir`; evaluators ported from it use that.
    @property
    def gt_dir(self) -> str | None:
        return self.gt_root

    def __getattr__(self, key: str) -> Any:
        extra = object.__getattribute__(self, "extra")
        if key in extra:
            return extra[key]
        raise AttributeError(f"metadata of dataset {self.name!r} has no attribute {key!r}")


@dataclass
class DatasetEntry:
    """How a dataset's records and metadata are made (each called on first use)."""

    records: Callable[[], list[dict]]
    metadata: Callable[[], Metadata]


def dataset_root() -> Path:
    """$ATROUS_DATASETS, else $DETECTRON2_DATASETS, else ./datasets."""
    for var in ("ATROUS_DATASETS", "DETECTRON2_DATASETS"):
        value = os.environ.get(var)
        if value:
            return Path(value).expanduser()
    return Path("datasets")


def default_colors(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """A fixed, well-spread palette for datasets that do not define colours."""
    colors = []
    for i in range(num_classes):
        # Pascal VOC's bit-interleaving palette: distinct for neighbouring indices.
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return tuple(colors)


def check_colors(colors: Sequence[Sequence[int]]) -> tuple[tuple[int, int, int], ...]:
    """Colours as RGB tuples, each checked to be three values in 0..255."""
    out = []
    for c in colors:
        if len(c) != 3 or not all(0 <= int(v) <= 255 for v in c):
            raise DatasetError(f"colour {list(c)} is not three values in 0..255")
        out.append((int(c[0]), int(c[1]), int(c[2])))
    return tuple(out)


def as_metadata(
    metadata: Any,
    *,
    num_classes: int | None = None,
    ignore_label: int | None = None,
) -> Metadata:
    """The `Metadata` for evaluators and visualisation, from what a caller has.

    Names are not looked up here (that is `atrous.data.get_metadata`'s job, done by builders such
    as `atrous.evaluation.build_evaluator`), so a component given metadata never consults the
    global catalog behind its caller's back.

    Args:
        metadata: a `Metadata` (returned as is unless `ignore_label` overrides it); None together
            with `num_classes` for anonymous classes ``class_0 ...``; or an object carrying the
            `Metadata` fields by name (at least ``stuff_classes``; detectron2's ``gt_dir`` is
            read as ``gt_root``), e.g. a detectron2 ``MetadataCatalog`` entry.
        num_classes: must equal the number of classes when both are known.
        ignore_label: overrides the metadata's ignore label.

    Raises:
        TypeError: `metadata` is a dataset name.
        ValueError: the class count disagrees with `num_classes`, or nothing defines the classes.
    """
    if isinstance(metadata, str):
        raise TypeError(
            f"got the dataset name {metadata!r} where metadata is expected: pass "
            f"atrous.data.get_metadata({metadata!r}) (and the dataset records where ground truth "
            "files are needed), or build the evaluator with atrous.evaluation.build_evaluator"
        )
    if metadata is None:
        if num_classes is None:
            raise ValueError("give a metadata object or num_classes")
        metadata = Metadata(
            name="unnamed",
            stuff_classes=tuple(f"class_{i}" for i in range(num_classes)),
            stuff_colors=default_colors(num_classes),
        )
    if not isinstance(metadata, Metadata):
        classes = tuple(str(c) for c in getattr(metadata, "stuff_classes", None) or ())
        if not classes:
            if num_classes is None:
                raise ValueError(f"metadata {metadata!r} has no stuff_classes")
            classes = tuple(f"class_{i}" for i in range(num_classes))
        colors = getattr(metadata, "stuff_colors", None)
        if colors is None or len(colors) < len(classes):
            colors = default_colors(len(classes))
        metadata = Metadata(
            name=str(getattr(metadata, "name", "unnamed")),
            stuff_classes=classes,
            stuff_colors=check_colors(list(colors)[: len(classes)]),
            ignore_label=int(getattr(metadata, "ignore_label", 255)),
            evaluator_type=str(getattr(metadata, "evaluator_type", "sem_seg")),
            image_root=getattr(metadata, "image_root", None),
            gt_root=getattr(metadata, "gt_root", None) or getattr(metadata, "gt_dir", None),
        )
    if num_classes is not None and num_classes != metadata.num_classes:
        raise ValueError(
            f"dataset '{metadata.name}' has {metadata.num_classes} classes but "
            f"num_classes={num_classes}; MODEL.SEM_SEG_HEAD.NUM_CLASSES must match the dataset"
        )
    if ignore_label is not None and int(ignore_label) != metadata.ignore_label:
        metadata = dataclasses.replace(metadata, ignore_label=int(ignore_label))
    return metadata
