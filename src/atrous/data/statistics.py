"""A thorough pass over a dataset: every file read once, its defects and its class statistics.

Training checks files lazily, when a sample is drawn, so that a run starts at once; this module
reads every image/label pair up front (in worker processes) and reports, per file:

* ``unreadable``: an image or label file that is missing, truncated, corrupt or too large;
* ``size_mismatch``: a label whose size is not its image's;
* ``out_of_range``: label values that are neither a class nor the ignore label (after the
  dataset's value mapping), and ``unknown_colors`` for colours a colour-coded mask may not hold;
* ``empty``: a label with no labelled pixel (all ignore);
* ``duplicate_image``: an image whose file content is the same as another image's;
* ``duplicate_entry``: the same image file listed more than once.

It also counts, per class, the labelled pixels and the images containing the class, from which
`class_weights` derives loss weights for imbalanced data:

* **median-frequency balancing** (Eigen & Fergus 2015, as used by SegNet):
  ``freq_c = pixels of c / labelled pixels of the images where c is present`` and
  ``weight_c = median(freq) / freq_c``, the median over the classes present;
* **inverse square-root frequency**: ``freq_c = pixels of c / all labelled pixels`` and
  ``weight_c = 1 / sqrt(freq_c)``, scaled so that the weights of the present classes average 1.

Ignored pixels count nowhere. A class that never occurs gets weight 1 (its pixels never reach
the loss anyway) and is listed in the report. `atrous check-dataset` prints and writes all this;
training (MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS "median_frequency" / "inverse_sqrt_frequency") uses
the same code with images skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..config.validate import CLASS_WEIGHT_METHODS as WEIGHT_METHODS
from ..utils.file_io import atomic_write, atomic_write_json
from .errors import DatasetError, UnknownColorError
from .image_io import DEFAULT_MAX_IMAGE_PIXELS, read_image
from .mapper import load_sem_seg

__all__ = [
    "WEIGHT_METHODS",
    "DatasetStatistics",
    "PairResult",
    "class_weights",
    "compute_statistics",
    "format_class_table",
    "inverse_sqrt_frequency_weights",
    "median_frequency_weights",
    "scan_pair",
    "write_report",
]

WEIGHT_DEFINITIONS = {
    "median_frequency": "median-frequency balancing (SegNet): freq_c = pixels of c / labelled "
    "pixels of the images containing c; weight_c = median over present classes of freq / freq_c",
    "inverse_sqrt_frequency": "freq_c = pixels of c / all labelled pixels; weight_c = "
    "1 / sqrt(freq_c), scaled so that the present classes' weights average 1",
    "absent": "a class with no labelled pixel gets weight 1",
}


@dataclasses.dataclass
class PairResult:
    """What reading one image/label pair found.

    Attributes:
        index: position of the record in the dataset.
        file_name: the image file.
        sem_seg_file_name: the label file (None when the record has none).
        image_hash: SHA-256 of the image file's bytes (None when not read).
        counts: labelled pixels per class ``(C,)`` int64 (None when the label was unreadable).
        labelled: labelled pixels of the label (in-class values).
        ignored: ignored pixels.
        problems: ``(kind, file, message)`` per defect found.
    """

    index: int
    file_name: str
    sem_seg_file_name: str | None
    image_hash: str | None = None
    counts: np.ndarray | None = None
    labelled: int = 0
    ignored: int = 0
    problems: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


def scan_pair(
    indexed_record: tuple[int, dict],
    *,
    num_classes: int,
    ignore_label: int = 255,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    read_images: bool = True,
) -> PairResult:
    """Read one record's image (unless `read_images` is False) and label; never raises for
    defects of the files, it reports them.

    Args:
        indexed_record: ``(index, record)``; the record as the catalog lists it.
        num_classes: classes are ``0 .. num_classes - 1``.
        ignore_label: training label of unlabelled pixels.
        max_pixels: pixel budget of each file (INPUT.MAX_IMAGE_PIXELS).
        read_images: decode and hash the image too (check-dataset), or the label only (class
            statistics for training).
    """
    index, record = indexed_record
    image_file = str(record.get("file_name"))
    label_file = record.get("sem_seg_file_name")
    result = PairResult(index=index, file_name=image_file, sem_seg_file_name=label_file)
    image_shape = None
    if read_images:
        try:
            with open(image_file, "rb") as f:
                result.image_hash = hashlib.sha256(f.read()).hexdigest()
            image_shape = read_image(image_file, max_pixels=max_pixels).shape[:2]
        except (OSError, DatasetError) as e:
            result.problems.append(("unreadable", image_file, _one_line(e)))
    if not label_file:
        return result
    try:
        label = load_sem_seg(record, max_pixels=max_pixels)
    except UnknownColorError as e:
        result.problems.append(("unknown_colors", str(label_file), _one_line(e)))
        return result
    except (OSError, DatasetError) as e:
        result.problems.append(("unreadable", str(label_file), _one_line(e)))
        return result
    if image_shape is not None and tuple(label.shape) != tuple(image_shape):
        result.problems.append(
            (
                "size_mismatch",
                str(label_file),
                f"{label_file}: label is {label.shape[0]}x{label.shape[1]} but its image "
                f"{image_file} is {image_shape[0]}x{image_shape[1]} (HxW)",
            )
        )
    hist = np.bincount(label.reshape(-1), minlength=max(num_classes, ignore_label + 1))
    result.counts = hist[:num_classes].astype(np.int64)
    result.labelled = int(result.counts.sum())
    result.ignored = int(hist[ignore_label]) if ignore_label >= num_classes else 0
    outside = [
        (v, int(hist[v])) for v in np.flatnonzero(hist[num_classes:]) + num_classes
        if v != ignore_label
    ]  # fmt: skip
    if outside:
        shown = ", ".join(f"{v} ({n:,} pixels)" for v, n in outside[:10])
        more = f" and {len(outside) - 10} more" if len(outside) > 10 else ""
        result.problems.append(
            (
                "out_of_range",
                str(label_file),
                f"{label_file}: values {shown}{more} are neither a class (0..{num_classes - 1}) "
                f"nor the ignore label {ignore_label}",
            )
        )
    elif result.labelled == 0:
        result.problems.append(
            ("empty", str(label_file), f"{label_file}: no labelled pixel (all are ignored)")
        )
    return result


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


@dataclasses.dataclass
class DatasetStatistics:
    """Class statistics and defects of a whole dataset.

    Attributes:
        class_names: ``C`` names.
        ignore_label: training label of unlabelled pixels.
        num_images: records scanned.
        pixels: labelled pixels per class ``(C,)``.
        images: images containing each class ``(C,)``.
        present_pixels: per class, labelled pixels of the images containing it ``(C,)``.
        ignored_pixels: ignored pixels in all labels.
        problems: ``{"kind", "file", "message"}`` dicts, in dataset order.
    """

    class_names: tuple[str, ...]
    ignore_label: int
    num_images: int
    pixels: np.ndarray
    images: np.ndarray
    present_pixels: np.ndarray
    ignored_pixels: int
    problems: list[dict[str, str]]

    @property
    def labelled_pixels(self) -> int:
        return int(self.pixels.sum())

    def problem_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p["kind"]] = counts.get(p["kind"], 0) + 1
        return counts

    def weights(self, method: str) -> list[float]:
        """`class_weights` of these statistics."""
        return class_weights(self, method)

    def to_json(self) -> dict[str, Any]:
        total = self.labelled_pixels
        weights = {m: self.weights(m) for m in WEIGHT_METHODS}
        classes = [
            {
                "id": i,
                "name": name,
                "pixels": int(self.pixels[i]),
                "pixel_share": float(self.pixels[i] / total) if total else 0.0,
                "images": int(self.images[i]),
                **{f"{m}_weight": weights[m][i] for m in WEIGHT_METHODS},
            }
            for i, name in enumerate(self.class_names)
        ]
        return {
            "num_images": self.num_images,
            "num_classes": len(self.class_names),
            "ignore_label": self.ignore_label,
            "labelled_pixels": total,
            "ignored_pixels": self.ignored_pixels,
            "classes": classes,
            "absent_classes": [
                n for n, k in zip(self.class_names, self.pixels, strict=True) if not k
            ],
            "class_weights": {**weights, "definitions": WEIGHT_DEFINITIONS},
            "problem_counts": self.problem_counts(),
            "problems": self.problems,
        }


def median_frequency_weights(pixels: Sequence[int], present_pixels: Sequence[int]) -> list[float]:
    """SegNet's median-frequency balancing (see the module docstring).

    Args:
        pixels: labelled pixels per class ``(C,)``.
        present_pixels: per class, labelled pixels of the images containing it ``(C,)``.

    Returns:
        ``C`` weights; 1.0 for a class without pixels.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    present_pixels = np.asarray(present_pixels, dtype=np.float64)
    present = pixels > 0
    if not present.any():
        return [1.0] * len(pixels)
    freq = np.zeros_like(pixels)
    freq[present] = pixels[present] / present_pixels[present]
    median = float(np.median(freq[present]))
    return [median / f if p else 1.0 for f, p in zip(freq, present, strict=True)]


def inverse_sqrt_frequency_weights(pixels: Sequence[int]) -> list[float]:
    """``1 / sqrt(freq_c)`` scaled to average 1 over the present classes (module docstring).

    Args:
        pixels: labelled pixels per class ``(C,)``.

    Returns:
        ``C`` weights; 1.0 for a class without pixels.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    present = pixels > 0
    if not present.any():
        return [1.0] * len(pixels)
    raw = np.ones_like(pixels)
    raw[present] = 1.0 / np.sqrt(pixels[present] / pixels.sum())
    raw[present] /= raw[present].mean()
    return [float(w) for w in raw]


def class_weights(stats: DatasetStatistics, method: str) -> list[float]:
    """Loss weights per class from dataset statistics.

    Args:
        stats: from `compute_statistics`.
        method: "median_frequency" or "inverse_sqrt_frequency".

    Raises:
        ValueError: an unknown method.
    """
    if method == "median_frequency":
        return median_frequency_weights(stats.pixels, stats.present_pixels)
    if method == "inverse_sqrt_frequency":
        return inverse_sqrt_frequency_weights(stats.pixels)
    raise ValueError(f"unknown class weight method {method!r}; use one of {WEIGHT_METHODS}")


def compute_statistics(
    records: Sequence[dict],
    *,
    class_names: Sequence[str],
    ignore_label: int = 255,
    workers: int = 0,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    read_images: bool = True,
    progress: bool = True,
    description: str = "reading",
) -> DatasetStatistics:
    """Read every record once (in `workers` processes; 0 or 1: in this one) and sum it up.

    Args:
        records: dataset records (``file_name``, ``sem_seg_file_name`` and the dataset's
            ``sem_seg_lut`` / ``sem_seg_color_coding``); sizes need not be filled in.
        class_names: the dataset's classes.
        ignore_label: training label of unlabelled pixels.
        workers: worker processes.
        max_pixels: pixel budget of every file (INPUT.MAX_IMAGE_PIXELS).
        read_images: also decode and hash the images (size mismatches, unreadable images,
            duplicates); False reads the labels only.
        progress: show a tqdm progress bar (on stderr).
        description: the progress bar's label.
    """
    from tqdm import tqdm

    num_classes = len(class_names)
    scan = functools.partial(
        scan_pair,
        num_classes=num_classes,
        ignore_label=ignore_label,
        max_pixels=max_pixels,
        read_images=read_images,
    )
    indexed = list(enumerate(records))
    bar = tqdm(total=len(indexed), desc=description, unit="file", disable=not progress)
    results: list[PairResult] = []
    with bar:
        if workers <= 1:
            for item in indexed:
                results.append(scan(item))
                bar.update()
        else:
            # Chunks keep a dataset-wide lookup table pickled once per chunk, not per record.
            chunk = max(1, min(64, len(indexed) // (4 * workers) or 1))
            # Spawned, not forked: the caller (a training rank, a notebook) may hold torch or
            # OpenVINO thread pools and open sockets, which a forked child would inherit
            # half-initialised.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                for result in pool.map(scan, indexed, chunksize=chunk):
                    results.append(result)
                    bar.update()
    return _aggregate(results, class_names=tuple(class_names), ignore_label=ignore_label)


def _aggregate(
    results: list[PairResult], *, class_names: tuple[str, ...], ignore_label: int
) -> DatasetStatistics:
    c = len(class_names)
    pixels = np.zeros(c, np.int64)
    images = np.zeros(c, np.int64)
    present_pixels = np.zeros(c, np.int64)
    ignored = 0
    problems: list[dict[str, str]] = []
    first_by_hash: dict[str, str] = {}
    first_by_path: dict[str, int] = {}
    for r in results:
        for kind, file, message in r.problems:
            problems.append({"kind": kind, "file": file, "message": message})
        key = os.path.realpath(r.file_name)
        if key in first_by_path:
            problems.append(
                {
                    "kind": "duplicate_entry",
                    "file": r.file_name,
                    "message": f"{r.file_name}: listed again (entries {first_by_path[key]} "
                    f"and {r.index}); a repeated pair weighs twice in training",
                }
            )
            continue  # counted once
        first_by_path[key] = r.index
        if r.image_hash is not None:
            if r.image_hash in first_by_hash:
                first = first_by_hash[r.image_hash]
                problems.append(
                    {
                        "kind": "duplicate_image",
                        "file": r.file_name,
                        "message": f"{r.file_name}: the same file content as {first}",
                    }
                )
            else:
                first_by_hash[r.image_hash] = r.file_name
        if r.counts is not None:
            pixels += r.counts
            has = r.counts > 0
            images += has
            present_pixels[has] += r.labelled
            ignored += r.ignored
    return DatasetStatistics(
        class_names=class_names,
        ignore_label=ignore_label,
        num_images=len(results),
        pixels=pixels,
        images=images,
        present_pixels=present_pixels,
        ignored_pixels=ignored,
        problems=problems,
    )


def format_class_table(stats: DatasetStatistics) -> str:
    """A fixed-width table: class, pixel share, images containing it, suggested weights."""
    width = max([len("class"), *(len(n) for n in stats.class_names)])
    header = (
        f"{'id':>3}  {'class':<{width}}  {'pixels %':>8}  {'images':>7}  "
        f"{'median-freq w':>13}  {'inv-sqrt w':>10}"
    )
    lines = [header, "-" * len(header)]
    total = stats.labelled_pixels
    mf, isf = stats.weights("median_frequency"), stats.weights("inverse_sqrt_frequency")
    for i, name in enumerate(stats.class_names):
        share = 100.0 * stats.pixels[i] / total if total else 0.0
        lines.append(
            f"{i:>3}  {name:<{width}}  {share:>8.3f}  {int(stats.images[i]):>7}  "
            f"{mf[i]:>13.4f}  {isf[i]:>10.4f}"
        )
    return "\n".join(lines)


def write_report(
    stats: DatasetStatistics, output_dir: str | os.PathLike, *, dataset: str
) -> dict[str, Path]:
    """Write ``dataset_report.json`` and ``class_frequency.png`` into `output_dir`.

    Returns:
        ``{"report": path, "chart": path}``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = out / "dataset_report.json"
    atomic_write_json(report, {"dataset": dataset, **stats.to_json()})
    chart = out / "class_frequency.png"
    _plot_frequencies(stats, chart, title=dataset)
    return {"report": report, "chart": chart}


def _plot_frequencies(stats: DatasetStatistics, path: Path, *, title: str) -> None:
    # A Figure without pyplot draws with the Agg canvas and touches no GUI backend.
    from matplotlib.figure import Figure

    total = stats.labelled_pixels
    shares = [100.0 * p / total if total else 0.0 for p in stats.pixels]
    n = len(stats.class_names)
    fig = Figure(figsize=(max(6.0, 0.35 * n + 2), 4.5), dpi=100)
    ax = fig.add_subplot()
    ax.bar(range(n), shares, color="#4c72b0")
    ax.set_xticks(range(n), stats.class_names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("share of labelled pixels (%)")
    if (
        any(s > 0 for s in shares)
        and max(shares) / max(min(s for s in shares if s > 0), 1e-12) > 100
    ):
        ax.set_yscale("log")  # a long tail would be invisible on a linear axis
    ax.set_title(f"{title}: {stats.num_images} images, {total:,} labelled pixels", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
