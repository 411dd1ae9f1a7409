"""Record -> model input: read, check, augment, convert to tensors.

The mapper's output is what the segmentor consumes::

    {"image": uint8 tensor (3, H, W) in the configured channel order,
     "sem_seg": int64 tensor (H, W) with the ignore label (when the record has a label; the
                training loader's is the narrowest type holding the labels, e.g. uint8),
     "height": H0, "width": W0,          # size of the image file, before any resizing
     "file_name": ..., "sem_seg_file_name": ..., "image_id": ...}

Pixels are checked here, lazily (a label whose size differs from its image, label values that
are neither a class nor the ignore label), because reading every file up front would make
starting a Cityscapes run slow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .errors import DatasetError
from .image_io import DEFAULT_MAX_IMAGE_PIXELS, LazyImage, read_image, read_label
from .transforms import (
    Augmentation,
    ColorJitter,
    RandomCropCategoryAreaConstraint,
    RandomFlip,
    ResizeShortestEdge,
    apply_augmentations,
)

__all__ = [
    "LABEL_RECORD_KEYS",
    "DatasetMapper",
    "build_test_augmentations",
    "build_train_augmentations",
    "compact_label_dtype",
    "load_sem_seg",
]


# The record keys that say how to read its training labels: whoever reads ground truth from a
# record (the mapper, the evaluators) passes these on to `load_sem_seg`.
LABEL_RECORD_KEYS = ("sem_seg_file_name", "sem_seg_lut", "sem_seg_color_coding")


def load_sem_seg(record: dict, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """The training labels of a record: its label file with `sem_seg_lut` applied.

    The one place labels are read from a record, for training and evaluation alike.

    Args:
        record: dataset record with "sem_seg_file_name", and optionally "sem_seg_lut" (stored
            value -> training label) or "sem_seg_color_coding" (a `ColorCoding`: the file is a
            colour-coded mask, decoded to class ids with 255 for unlabelled pixels).
        max_pixels: pixel budget of the label file (INPUT.MAX_IMAGE_PIXELS), checked from its
            header before decoding; None, 0 or negative: no limit.

    Returns:
        (H, W) uint8/uint16 array.

    Raises:
        ImageTooLargeError: the label file has more pixels than `max_pixels`.
        UnknownColorError: a colour-coded mask holds a colour its coding does not list.
    """
    coding = record.get("sem_seg_color_coding")
    label = read_label(record["sem_seg_file_name"], max_pixels=max_pixels, color_coding=coding)
    lut = record.get("sem_seg_lut")
    if lut is not None:
        label = np.take(lut, label)
    return label


def check_label_values(
    label: np.ndarray, *, num_classes: int, ignore_label: int, file_name: str
) -> None:
    """Raise a `DatasetError` naming the file if a value is neither a class nor ignore."""
    if label.size == 0 or int(label.max()) < num_classes:
        return
    bad = (label >= num_classes) & (label != ignore_label)
    if bad.any():
        values = np.unique(label[bad])
        shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
        raise DatasetError(
            f"{file_name}: label values {shown} are neither a class (0..{num_classes - 1}) nor "
            f"the ignore label {ignore_label}. Check MODEL.SEM_SEG_HEAD.NUM_CLASSES, or map "
            "the values with 'label_map' / 'ignore_value' in the dataset YAML (Cityscapes: use "
            "the *_gtFine_labelTrainIds.png files)."
        )


class DatasetMapper:
    """Callable turning a dataset record into the model's input dict.

    Args:
        augmentations: transforms applied jointly to image and label.
        image_format: channel order of the output image, "RGB" or "BGR".
        num_classes: number of classes (labels must be < num_classes or the ignore label).
        ignore_label: label of unlabelled pixels.
        fused: compute only the final crop window (identical output, faster).
        label_dtype: numpy integer type of the "sem_seg" tensor: int64 (detectron2's) by
            default; the training loader asks for `compact_label_dtype`.
        max_image_pixels: pixel budget of every image and label file (INPUT.MAX_IMAGE_PIXELS),
            checked from the header before decoding; None, 0 or negative: no limit.
    """

    def __init__(
        self,
        *,
        augmentations: Sequence[Augmentation],
        image_format: str,
        num_classes: int,
        ignore_label: int = 255,
        fused: bool = True,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        label_dtype: type[np.integer] = np.int64,
    ) -> None:
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {image_format!r}")
        self.augmentations = list(augmentations)
        self.image_format = image_format
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.fused = fused
        self.max_image_pixels = max_image_pixels
        self.label_dtype = label_dtype

    def __call__(self, record: dict, rng: np.random.RandomState | None = None) -> dict:
        """Map one record.

        Args:
            record: dataset record ("file_name", optional "sem_seg_file_name", ...).
            rng: source of the augmentations' random draws (default: a fixed seed, which is
                what deterministic test-time pipelines want).
        """
        if rng is None:
            rng = np.random.RandomState(0)
        if self.fused:
            image = LazyImage(
                record["file_name"], self.image_format, max_pixels=self.max_image_pixels
            )
            height, width = image.shape
        else:
            image = read_image(
                record["file_name"], self.image_format, max_pixels=self.max_image_pixels
            )
            height, width = image.shape[:2]
        sem_seg = None
        if record.get("sem_seg_file_name"):
            sem_seg = load_sem_seg(record, max_pixels=self.max_image_pixels)
            if sem_seg.shape != (height, width):
                raise DatasetError(
                    f"label {record['sem_seg_file_name']} is {sem_seg.shape[0]}x"
                    f"{sem_seg.shape[1]} but its image {record['file_name']} is "
                    f"{height}x{width} (HxW). Labels must have the size of their image: fix or "
                    "remove this pair."
                )
            check_label_values(
                sem_seg,
                num_classes=self.num_classes,
                ignore_label=self.ignore_label,
                file_name=record["sem_seg_file_name"],
            )
        image, sem_seg, _ = apply_augmentations(
            self.augmentations, image, sem_seg, rng, fused=self.fused
        )
        if not isinstance(image, np.ndarray):  # no transform at all: decode everything
            image = image.array()
        out = {k: v for k, v in record.items() if k not in ("height", "width", "annotations")}
        # Exactly one copy each: HWC (possibly a flipped, channel-reversed, read-only view) ->
        # a fresh, writable, C-contiguous CHW array.
        out["image"] = torch.from_numpy(np.array(image.transpose(2, 0, 1), order="C"))
        if sem_seg is not None:
            out["sem_seg"] = torch.from_numpy(np.array(sem_seg, dtype=self.label_dtype, order="C"))
        out["height"], out["width"] = height, width
        return out

    def map_image(self, image: np.ndarray, rng: np.random.RandomState | None = None) -> dict:
        """Map an in-memory image (no label) exactly as `__call__` maps a record's image file.

        Args:
            image: ``(H, W, 3)`` uint8 in RGB order (what Pillow reads); converted to
                `image_format`.
            rng: as in `__call__`.

        Returns:
            ``{"image": uint8 (3, H', W') in image_format, "height": H, "width": W}``.
        """
        if rng is None:
            rng = np.random.RandomState(0)
        if self.image_format == "BGR":
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        image, _, _ = apply_augmentations(self.augmentations, image, None, rng, fused=self.fused)
        return {
            "image": torch.from_numpy(np.array(image.transpose(2, 0, 1), order="C")),
            "height": height,
            "width": width,
        }


def build_train_augmentations(cfg) -> list[Augmentation]:
    """projects/DeepLab's ``build_sem_seg_train_aug``: resize, constrained crop, flip.

    Plus the optional colour jitter (INPUT.COLOR_AUG, off by default).
    """
    augs: list[Augmentation] = [
        ResizeShortestEdge(
            short_edge_length=tuple(cfg.INPUT.MIN_SIZE_TRAIN),
            max_size=cfg.INPUT.MAX_SIZE_TRAIN,
            sample_style=cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            RandomCropCategoryAreaConstraint(
                crop_type=cfg.INPUT.CROP.TYPE,
                crop_size=tuple(cfg.INPUT.CROP.SIZE),
                single_category_max_area=cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                ignored_category=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    flip = str(cfg.INPUT.RANDOM_FLIP).lower()
    if flip == "horizontal":
        augs.append(RandomFlip(prob=0.5))
    elif flip != "none":
        raise ValueError(
            f"INPUT.RANDOM_FLIP {cfg.INPUT.RANDOM_FLIP!r} is not supported; use 'horizontal' "
            "or 'none'"
        )
    if cfg.INPUT.COLOR_AUG.ENABLED:
        augs.append(
            ColorJitter(
                brightness=cfg.INPUT.COLOR_AUG.BRIGHTNESS,
                contrast=cfg.INPUT.COLOR_AUG.CONTRAST,
                saturation=cfg.INPUT.COLOR_AUG.SATURATION,
                channel_order=cfg.INPUT.FORMAT,
            )
        )
    return augs


def build_test_augmentations(cfg) -> list[Augmentation]:
    """ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST); MIN_SIZE_TEST 0 disables it."""
    if cfg.INPUT.MIN_SIZE_TEST == 0:
        return []
    return [
        ResizeShortestEdge(
            short_edge_length=cfg.INPUT.MIN_SIZE_TEST,
            max_size=cfg.INPUT.MAX_SIZE_TEST,
            sample_style="choice",
        )
    ]


def build_mapper(cfg, *, is_train: bool, compact_labels: bool = False) -> DatasetMapper:
    """The mapper of the training or test pipeline described by `cfg`.

    Args:
        compact_labels: give "sem_seg" in the narrowest integer type that holds every class id
            and the ignore label (`compact_label_dtype`) instead of int64.
    """
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    ignore_label = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    return DatasetMapper(
        augmentations=build_train_augmentations(cfg) if is_train else build_test_augmentations(cfg),
        image_format=cfg.INPUT.FORMAT,
        num_classes=num_classes,
        ignore_label=ignore_label,
        max_image_pixels=cfg.INPUT.MAX_IMAGE_PIXELS,
        label_dtype=compact_label_dtype(num_classes, ignore_label) if compact_labels else np.int64,
    )


def compact_label_dtype(num_classes: int, ignore_label: int) -> type[np.integer]:
    """The narrowest integer type holding class ids ``[0, num_classes)`` and `ignore_label`.

    uint8 for Cityscapes (19 classes, ignore 255): an eighth of int64's bytes to move from the
    loader workers and to the GPU.
    """
    largest = max(int(num_classes) - 1, int(ignore_label))
    smallest = min(0, int(ignore_label))
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= smallest and largest <= info.max:
            return dtype
    return np.int64
