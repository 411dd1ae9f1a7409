"""Speed of the training data pipeline, against a straightforward Pillow + numpy version.

Both pipelines map the same records with the same random draws (the Cityscapes recipe of the
original: short side chosen from 512..2048, long side at most 4096, 512x1024 crop, horizontal
flip) and must produce identical tensors; the benchmark checks that on every sample. They are
timed alternately in one process (one data-loader worker), so machine noise hits both alike.

* baseline: Pillow decodes the PNGs, the whole image and label are resized, then cropped,
  flipped, channel-swapped and converted (`AugInput`, every step on full arrays).
* atrous: the random draws come first, then the image PNG is decoded only down to the last
  row the crop depends on (Pillow's decoder, `LazyImage`), the label is gathered only inside the
  crop through Pillow's nearest-neighbour tables, an enlarged image is resampled only inside
  the crop window (`FusedAugInput`), and the channel swap and flip are views folded into the one
  copy into the CHW tensor.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..utils.timing import cpu_name
from .datasets.cityscapes import load_cityscapes_semantic
from .errors import DatasetError
from .loader import sample_rng
from .mapper import DatasetMapper, check_label_values
from .transforms import (
    Augmentation,
    RandomCropCategoryAreaConstraint,
    RandomFlip,
    ResizeShortestEdge,
    apply_augmentations,
)

__all__ = [
    "baseline_map",
    "benchmark_data_loading",
    "benchmark_train_pipeline",
    "cityscapes_train_augmentations",
]


def cityscapes_train_augmentations(
    *,
    min_sizes: tuple[int, ...] = (512, 768, 1024, 1280, 1536, 1792, 2048),
    max_size: int = 4096,
    crop_size: tuple[int, int] = (512, 1024),
    single_category_max_area: float = 1.0,
) -> list[Augmentation]:
    """The augmentation of configs/Cityscapes-SemanticSegmentation (the original's recipe)."""
    return [
        ResizeShortestEdge(short_edge_length=min_sizes, max_size=max_size, sample_style="choice"),
        RandomCropCategoryAreaConstraint(
            crop_type="absolute",
            crop_size=crop_size,
            single_category_max_area=single_category_max_area,
            ignored_category=255,
        ),
        RandomFlip(prob=0.5),
    ]


def baseline_map(
    record: dict,
    augmentations: list[Augmentation],
    rng: np.random.RandomState,
    *,
    image_format: str = "RGB",
    num_classes: int = 19,
) -> dict:
    """The plain way: Pillow decode, full-size numpy/Pillow transforms, then tensors."""
    with Image.open(record["file_name"]) as img:
        image = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    if image_format == "BGR":
        image = image[:, :, ::-1].copy()
    height, width = image.shape[:2]
    with Image.open(record["sem_seg_file_name"]) as lab:
        label = np.asarray(lab)
    if record.get("sem_seg_lut") is not None:
        label = record["sem_seg_lut"][label]
    check_label_values(
        label, num_classes=num_classes, ignore_label=255, file_name=record["sem_seg_file_name"]
    )
    image, label, _ = apply_augmentations(augmentations, image, label, rng, fused=False)
    image = np.ascontiguousarray(image.transpose(2, 0, 1))
    return {
        "image": torch.from_numpy(image),
        "sem_seg": torch.from_numpy(label.astype(np.int64)),
        "height": height,
        "width": width,
        "file_name": record["file_name"],
    }


def _time_both_pipelines(
    records: list[dict],
    augmentations: list[Augmentation],
    *,
    iterations: int,
    warmup: int,
    seed: int,
    image_format: str,
) -> tuple[list[float], list[float]]:
    """Map each sample with both pipelines, alternately, and check they agree.

    Args:
        records: dataset records, used round-robin.
        augmentations: applied by both pipelines with the same per-sample draws.
        iterations: samples timed.
        warmup: untimed samples first.
        seed: seed of the per-sample random draws.
        image_format: "RGB" or "BGR".

    Returns:
        ``(fast_times, baseline_times)``: seconds per timed sample, `iterations` each.

    Raises:
        AssertionError: the two pipelines disagree on some sample.
    """
    fast = DatasetMapper(augmentations=augmentations, image_format=image_format, num_classes=19)
    fast_times, base_times = [], []
    for i in range(warmup + iterations):
        record = records[i % len(records)]
        t0 = time.perf_counter()
        a = fast(record, sample_rng(seed, i))
        t1 = time.perf_counter()
        b = baseline_map(record, augmentations, sample_rng(seed, i), image_format=image_format)
        t2 = time.perf_counter()
        if not (torch.equal(a["image"], b["image"]) and torch.equal(a["sem_seg"], b["sem_seg"])):
            raise AssertionError(f"pipelines disagree on sample {i} ({record['file_name']})")
        if i >= warmup:
            fast_times.append(t1 - t0)
            base_times.append(t2 - t1)
    return fast_times, base_times


def benchmark_train_pipeline(
    *,
    root: str | os.PathLike | None = None,
    num_images: int = 4,
    size: tuple[int, int] = (1024, 2048),
    iterations: int = 20,
    warmup: int = 2,
    seed: int = 0,
    image_format: str = "RGB",
    augmentations: list[Augmentation] | None = None,
) -> dict:
    """Measure training-pipeline throughput of one worker, fast path vs. baseline.

    Args:
        root: a dataset in the Cityscapes layout (its train split is used); default: generate
            `num_images` synthetic images of `size` in a temporary folder.
        num_images: images to generate when `root` is None.
        size: (H, W) of the generated images.
        iterations: samples timed per pipeline.
        warmup: untimed samples first (file cache, lazy imports).
        seed: seed of the per-sample random draws.
        image_format: "RGB" or "BGR".
        augmentations: default `cityscapes_train_augmentations()`.

    Returns:
        dict with images/s and ms/image (median) of both pipelines, the speed-up, whether all
        outputs were identical, and the machine.

    Raises:
        AssertionError: the two pipelines disagree on some sample.
    """
    augs = augmentations if augmentations is not None else cityscapes_train_augmentations()
    tmp = None
    if root is None:
        from .datasets.synthetic import generate_dataset

        tmp = tempfile.TemporaryDirectory(prefix="atrous-bench-")
        root = generate_dataset(
            Path(tmp.name) / "synthetic", num_train=num_images, num_val=0, size=size, seed=seed
        )
    try:
        root = Path(root)
        try:
            records = load_cityscapes_semantic(
                root / "leftImg8bit" / "train", root / "gtFine" / "train", how_to_get=""
            )
        except DatasetError as e:
            raise DatasetError(f"benchmark dataset: {e}") from e
        fast_times, base_times = _time_both_pipelines(
            records,
            augs,
            iterations=iterations,
            warmup=warmup,
            seed=seed,
            image_format=image_format,
        )
        h, w = records[0]["height"], records[0]["width"]
    finally:
        if tmp is not None:
            tmp.cleanup()
    fast_ips = len(fast_times) / sum(fast_times)
    base_ips = len(base_times) / sum(base_times)
    return {
        "image_size": [h, w],
        "samples": len(fast_times),
        "identical": True,
        "fast_images_per_s": fast_ips,
        "baseline_images_per_s": base_ips,
        "speedup": fast_ips / base_ips,
        "fast_ms_median": 1000 * statistics.median(fast_times),
        "baseline_ms_median": 1000 * statistics.median(base_times),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }


def format_report(result: dict) -> str:
    h, w = result["image_size"]
    return "\n".join(
        [
            f"training data pipeline, one worker, {h}x{w} PNGs, {result['samples']} samples "
            f"({result['cpu']}, {result['cpu_count']} CPUs)",
            f"  baseline (Pillow + numpy): {result['baseline_images_per_s']:6.2f} images/s "
            f"({result['baseline_ms_median']:.0f} ms median)",
            f"  atrous:                    {result['fast_images_per_s']:6.2f} images/s "
            f"({result['fast_ms_median']:.0f} ms median)",
            f"  speed-up x{result['speedup']:.2f}, outputs identical: {result['identical']}",
        ]
    )


def benchmark_data_loading(
    cfg,
    *,
    warmup: int = 2,
    iters: int = 20,
    num_images: int = 4,
    size: tuple[int, int] = (1024, 2048),
    root: str | os.PathLike | None = None,
) -> dict:
    """`benchmark_train_pipeline` with the training augmentation and format of `cfg`.

    Used by ``atrous benchmark --mode data``; the images are synthetic 1024x2048 PNGs unless a
    dataset `root` in the Cityscapes layout is given.
    """
    from .mapper import build_train_augmentations

    return benchmark_train_pipeline(
        root=root,
        num_images=num_images,
        size=size,
        iterations=iters,
        warmup=warmup,
        image_format=cfg.INPUT.FORMAT,
        augmentations=build_train_augmentations(cfg),
    )
