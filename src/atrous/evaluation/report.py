"""An HTML page that shows an evaluation: IoU per class, the confusion matrix and sample images.

Everything is written into one folder (``report.html`` next to ``report_files/``), with relative
links, so the folder can be copied or served as is.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from atrous.utils.visualize import colorize, overlay

from ..data.metadata import Metadata
from ..utils.file_io import atomic_write_text

__all__ = ["plot_confusion_matrix", "plot_iou_bars", "write_report"]

_THUMB_WIDTH = 384


def _pyplot():
    # A report is written on servers without a display: force the file-only backend before
    # pyplot is first imported.
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_iou_bars(
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    iou: Sequence[float],
    colors: Sequence[tuple[int, int, int]],
    *,
    miou: float | None = None,
) -> None:
    """Horizontal bar chart of per-class IoU in percent; classes without ground truth say n/a."""
    plt = _pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.32 * n + 1)), dpi=100)
    values = [0.0 if math.isnan(v) else v for v in iou]
    bar_colors = [tuple(c / 255 for c in colors[i]) for i in range(n)]
    y = np.arange(n)
    ax.barh(y, values, color=bar_colors, edgecolor="black", linewidth=0.5)
    for i, v in enumerate(iou):
        ax.text(
            min(values[i], 100) + 1, i, "n/a" if math.isnan(v) else f"{v:.1f}", va="center", size=8
        )
    if miou is not None and not math.isnan(miou):
        ax.axvline(miou, color="black", linestyle="--", linewidth=1, label=f"mIoU {miou:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, labels=list(class_names), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("IoU (%)")
    ax.set_title("IoU per class")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion_matrix(
    path: str | os.PathLike[str], conf: np.ndarray, class_names: Sequence[str]
) -> None:
    """Heat map of the confusion matrix normalised per ground-truth class (rows sum to 1).

    Args:
        conf: ``(C + 1, C + 1)`` counts indexed ``[pred, gt]`` (ignored column last) or
            ``(C, C)``; drawn with ground truth on the vertical axis.
    """
    plt = _pyplot()
    n = len(class_names)
    m = np.asarray(conf, dtype=np.float64)[:n, :n].T  # rows: ground truth, columns: prediction
    totals = m.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(totals > 0, m / totals, np.nan)
    size = max(4.0, 0.38 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=100)
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=list(class_names), rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix (normalised per ground-truth class)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _thumbnail(rgb: np.ndarray) -> Image.Image:
    img = Image.fromarray(rgb)
    if img.width > _THUMB_WIDTH:
        height = max(1, round(img.height * _THUMB_WIDTH / img.width))
        # nearest keeps label colours crisp; photos are only previews here
        img = img.resize((_THUMB_WIDTH, height), Image.Resampling.NEAREST)
    return img


def _read_photo(file_name: Any, shape: tuple[int, int]) -> np.ndarray | None:
    if not file_name:
        return None
    from atrous.data import ImageReadError, read_image

    try:
        # The data layer's reader applies EXIF orientation, as the mapper did for the prediction.
        # Only a photo of the prediction's size is used, so no larger one is decoded.
        photo = read_image(file_name, "RGB", max_pixels=shape[0] * shape[1])
    except ImageReadError:
        return None
    return photo if photo.shape[:2] == shape else None


def write_report(
    output_dir: str | os.PathLike[str],
    *,
    metrics: dict[str, float],
    conf: np.ndarray,
    metadata: Metadata,
    samples: Sequence[dict[str, Any]] = (),
    title: str | None = None,
) -> Path:
    """Write ``report.html`` and its pictures into `output_dir`.

    Args:
        metrics: `SemSegEvaluator` results (mIoU, IoU-<name>, ...).
        conf: ``(C + 1, C + 1)`` confusion matrix indexed ``[pred, gt]``.
        metadata: class names and colours.
        samples: dicts with ``pred`` and ``gt`` uint8 label maps ``(H, W)`` (255 = ignore) and
            optionally ``file_name`` of the photo.
        title: page heading; defaults to the dataset name.

    Returns:
        Path of the HTML file.
    """
    out = Path(output_dir)
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    names = metadata.stuff_classes
    colors = metadata.stuff_colors
    iou = [metrics.get(f"IoU-{n}", math.nan) for n in names]
    plot_iou_bars(files / "iou_per_class.png", names, iou, colors, miou=metrics.get("mIoU"))
    plot_confusion_matrix(files / "confusion_matrix.png", conf, names)

    rows = [_sample_row(files, i, sample, colors) for i, sample in enumerate(samples)]
    page = _render_page(
        heading=html.escape(title or f"Evaluation on {metadata.name}"),
        summary=_summary_rows(metrics),
        rows="".join(rows),
        per_class=_per_class_rows(metrics, names, colors),
    )
    path = out / "report.html"
    atomic_write_text(path, page)
    return path


def _sample_row(files: Path, i: int, sample: dict[str, Any], colors: Sequence[Any]) -> str:
    """Save sample `i`'s thumbnails into `files` and return its ``<tr>`` of the samples table.

    Args:
        files: the ``report_files`` folder.
        sample: ``pred`` and ``gt`` uint8 label maps ``(H, W)``, optionally ``file_name``.
        colors: one RGB colour per class.
    """
    pred, gt = sample["pred"], sample["gt"]
    photo = _read_photo(sample.get("file_name"), pred.shape)
    cells = []
    if photo is not None:
        _thumbnail(photo).save(files / f"sample_{i}_image.png")
        _thumbnail(overlay(photo, pred, colors, opacity=0.6)).save(
            files / f"sample_{i}_overlay.png"
        )
        cells += [f"sample_{i}_image.png", f"sample_{i}_overlay.png"]
    else:
        cells += [None, None]
    _thumbnail(colorize(pred, colors)).save(files / f"sample_{i}_pred.png")
    _thumbnail(colorize(gt, colors)).save(files / f"sample_{i}_gt.png")
    cells += [f"sample_{i}_pred.png", f"sample_{i}_gt.png"]
    caption = html.escape(os.path.basename(str(sample.get("file_name") or f"sample {i}")))
    tds = "".join(
        f'<td><img src="report_files/{c}" alt="{c}"></td>' if c else "<td>(no photo)</td>"
        for c in cells
    )
    return f"<tr><th>{caption}</th>{tds}</tr>"


def _fmt(v: float | None) -> str:
    """A metric with two decimals, or "n/a" when missing or NaN."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _summary_rows(metrics: dict[str, float]) -> str:
    """The ``<tr>`` rows of the summary table: the overall metrics that `metrics` has."""
    return "".join(
        f"<tr><th>{k}</th><td>{_fmt(metrics.get(k))}</td></tr>"
        for k in ("mIoU", "fwIoU", "mACC", "pACC")
        if k in metrics
    )


def _per_class_rows(metrics: dict[str, float], names: Sequence[str], colors: Sequence[Any]) -> str:
    """The ``<tr>`` rows of the per-class table: swatch and name, IoU, ACC, boundary IoU."""
    return "".join(
        "<tr><td><span class='sw' style='background:rgb{}'></span>{}</td>"
        "<td>{}</td><td>{}</td><td>{}</td></tr>".format(
            tuple(colors[i]),
            html.escape(n),
            _fmt(metrics.get(f"IoU-{n}")),
            _fmt(metrics.get(f"ACC-{n}")),
            _fmt(metrics.get(f"BoundaryIoU-{n}")),
        )
        for i, n in enumerate(names)
    )


def _render_page(*, heading: str, summary: str, rows: str, per_class: str) -> str:
    """The HTML page around the (already escaped) heading and the tables' rows."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{heading}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
.sw {{ display: inline-block; width: 12px; height: 12px; margin-right: 6px;
      border: 1px solid #000; }}
img {{ max-width: {_THUMB_WIDTH}px; }}
.charts img {{ max-width: none; margin-right: 2em; }}
</style>
</head>
<body>
<h1>{heading}</h1>
<h2>Summary</h2>
<table id="summary">{summary}</table>
<h2>Charts</h2>
<div class="charts">
<img id="iou-chart" src="report_files/iou_per_class.png" alt="IoU per class">
<img id="confusion-chart" src="report_files/confusion_matrix.png" alt="confusion matrix">
</div>
<h2>Samples</h2>
<table id="samples">
<tr><th>image</th><th>photo</th><th>overlay</th><th>prediction</th><th>ground truth</th></tr>
{rows}
</table>
<h2>Per class</h2>
<table id="per-class"><tr><th>class</th><th>IoU</th><th>ACC</th><th>Boundary IoU</th></tr>
{per_class}
</table>
</body>
</html>
"""
