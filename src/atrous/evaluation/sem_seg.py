"""Semantic segmentation metrics as detectron2's `SemSegEvaluator` defines them.

A confusion matrix ``conf[pred, gt]`` of shape ``(C + 1, C + 1)`` is accumulated on the device of
the model's outputs with `torch.bincount`; the ignore label is mapped to index ``C`` so ignored
pixels land in the last column and never count. In a multi-process run the matrices are summed
across ranks with one all-reduce, so every rank ends with exactly the single-process matrix.

Metrics (percent): mIoU, fwIoU, mACC, pACC, and per class IoU-<name>, ACC-<name>,
BoundaryIoU-<name> and min(IoU, B-Iou)-<name>. A class absent from the ground truth has NaN IoU
and accuracy and is left out of the means (the official Cityscapes script differs: it scores 0 for
a class that is predicted but absent; see `atrous.evaluation.cityscapes`).
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from atrous.utils import comm

from ..data.metadata import Metadata, as_metadata
from ..utils.file_io import atomic_write_json, atomic_write_text
from .evaluator import DatasetEvaluator

__all__ = [
    "SemSegEvaluator",
    "accumulate_confusion",
    "format_per_class_table",
    "mask_to_boundary",
    "metrics_from_confusion",
]

logger = logging.getLogger(__name__)


def accumulate_confusion(
    conf: torch.Tensor, pred: torch.Tensor, gt: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Add one image's pixel counts to a confusion matrix in place.

    Args:
        conf: int64 matrix ``(C + 1, C + 1)`` indexed ``[pred, gt]``.
        pred: predicted class ids ``(H, W)`` in ``[0, C)``.
        gt: ground-truth ids ``(H, W)`` in ``[0, C]``, ignored pixels already mapped to ``C``.
        num_classes: ``C``.

    Returns:
        `conf`, for chaining.
    """
    n = num_classes + 1
    flat = pred.reshape(-1).to(torch.int64) * n + gt.reshape(-1).to(torch.int64)
    conf += torch.bincount(flat, minlength=n * n).reshape(n, n).to(conf.device)
    return conf


def mask_to_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """detectron2's boundary map of a label image, used for its Boundary IoU.

    The label image is eroded (a 3x3 minimum filter, repeated ``d = max(1, round(ratio *
    diagonal))`` times, the image padded by one pixel of 0 so that the border counts as a
    boundary) and subtracted from itself. As in detectron2 this is applied to the whole label map,
    not to one binary mask per class: the "boundary" value of a pixel is its label minus the
    smallest label within ``d`` pixels, and the confusion matrix of those values is what its
    Boundary IoU scores.

    Args:
        mask: uint8 label image ``(H, W)``.
        dilation_ratio: erosion depth relative to the image diagonal.

    Returns:
        uint8 array ``(H, W)``.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask_to_boundary expects a 2-D label image, got shape {mask.shape}")
    h, w = mask.shape
    dilation = max(1, round(dilation_ratio * math.sqrt(h * h + w * w)))
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), dtype=np.uint8), iterations=dilation)[1:-1, 1:-1]
    return mask - eroded


def metrics_from_confusion(
    conf: np.ndarray,
    class_names: tuple[str, ...] | list[str],
    boundary_conf: np.ndarray | None = None,
) -> OrderedDict[str, float]:
    """detectron2's metrics from a ``(C + 1, C + 1)`` confusion matrix indexed ``[pred, gt]``.

    Args:
        conf: pixel counts; the last row/column holds ignored ground truth.
        class_names: ``C`` names, used in the per-class keys.
        boundary_conf: the same matrix for boundary maps (see `mask_to_boundary`), or None to
            leave Boundary IoU out.

    Returns:
        Ordered metrics in percent, in detectron2's key order. NaN marks classes without ground
        truth pixels (and means over no class at all).
    """
    num_classes = len(class_names)
    conf = np.asarray(conf, dtype=np.float64)
    if conf.shape != (num_classes + 1, num_classes + 1):
        raise ValueError(f"confusion matrix {conf.shape} does not fit {num_classes} classes")
    tp = conf.diagonal()[:-1]
    pos_gt = conf[:-1, :-1].sum(axis=0)
    pos_pred = conf[:-1, :-1].sum(axis=1)
    acc_valid = pos_gt > 0
    union = pos_gt + pos_pred - tp
    iou_valid = acc_valid & (union > 0)
    acc = np.full(num_classes, np.nan)
    iou = np.full(num_classes, np.nan)
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    total_gt = pos_gt.sum()

    def _mean(values: np.ndarray, valid: np.ndarray) -> float:
        return float(values[valid].sum() / valid.sum()) if valid.any() else math.nan

    miou = _mean(iou, iou_valid)
    macc = _mean(acc, acc_valid)
    fwiou = float((iou[iou_valid] * pos_gt[iou_valid] / total_gt).sum()) if total_gt else math.nan
    pacc = float(tp.sum() / total_gt) if total_gt else math.nan

    b_iou = None
    if boundary_conf is not None:
        b = np.asarray(boundary_conf, dtype=np.float64)
        b_tp = b.diagonal()[:-1]
        b_union = b[:-1, :-1].sum(axis=0) + b[:-1, :-1].sum(axis=1) - b_tp
        b_iou = np.full(num_classes, np.nan)
        b_valid = b_union > 0
        b_iou[b_valid] = b_tp[b_valid] / b_union[b_valid]

    res: OrderedDict[str, float] = OrderedDict()
    res["mIoU"] = 100 * miou
    res["fwIoU"] = 100 * fwiou
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = 100 * float(iou[i])
        if b_iou is not None:
            res[f"BoundaryIoU-{name}"] = 100 * float(b_iou[i])
            # Python's min, as detectron2 uses: NaN propagates only from its first argument.
            res[f"min(IoU, B-Iou)-{name}"] = 100 * float(min(iou[i], b_iou[i]))
    res["mACC"] = 100 * macc
    res["pACC"] = 100 * pacc
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = 100 * float(acc[i])
    return res


def format_per_class_table(
    metrics: dict[str, float], class_names: tuple[str, ...] | list[str]
) -> str:
    """A fixed-width text table: one row per class with IoU, ACC and Boundary IoU."""
    width = max([len("class"), *(len(n) for n in class_names)])
    has_b = any(f"BoundaryIoU-{n}" in metrics for n in class_names)
    header = f"{'class':<{width}} | {'IoU':>7} | {'ACC':>7}" + (" | B-IoU  " if has_b else "")
    lines = [header, "-" * len(header)]

    def _fmt(v: float | None) -> str:
        return "    nan" if v is None or math.isnan(v) else f"{v:7.2f}"

    for name in class_names:
        row = f"{name:<{width}} | {_fmt(metrics.get(f'IoU-{name}'))} | "
        row += _fmt(metrics.get(f"ACC-{name}"))
        if has_b:
            row += f" | {_fmt(metrics.get(f'BoundaryIoU-{name}'))}"
        lines.append(row)
    lines.append("-" * len(header))
    lines.append(
        "  ".join(f"{k} {_fmt(metrics[k]).strip()}" for k in ("mIoU", "fwIoU", "mACC", "pACC"))
    )
    return "\n".join(lines)


class SemSegEvaluator(DatasetEvaluator):
    """mIoU, fwIoU, mACC, pACC, per-class IoU/accuracy and Boundary IoU, as in detectron2.

    Ground truth is read at the original image size, like detectron2: from the input's
    ``sem_seg_file_name`` if present, else from the dataset records' ``file_name ->
    sem_seg_file_name`` mapping (given as `records`). When no file is
    known, an ``input["sem_seg"]`` tensor of the prediction's size is used instead.
    """

    def __init__(
        self,
        metadata: Any,
        *,
        output_dir: str | os.PathLike[str] | None = None,
        distributed: bool = True,
        num_classes: int | None = None,
        ignore_label: int | None = None,
        records: Sequence[dict[str, Any]] | Callable[[], Sequence[dict[str, Any]]] | None = None,
        compute_boundary_iou: bool = True,
        dilation_ratio: float = 0.02,
        num_report_samples: int = 8,
        write_report: bool = True,
        max_image_pixels: int | None = None,
    ) -> None:
        """
        Args:
            metadata: the dataset's `atrous.data.Metadata` (or an object with its fields, see
                `atrous.data.as_metadata`); `build_evaluator` looks it up from a dataset name.
            output_dir: where the JSON/CSV metrics and the HTML report go; None writes nothing.
            distributed: sum the statistics over all ranks in `evaluate`.
            num_classes: checked against the metadata's class count.
            ignore_label: overrides the metadata's ignore label.
            records: dataset records mapping ``file_name`` to ``sem_seg_file_name``, for inputs
                that do not carry the latter; or a function returning them, called the first time
                such an input arrives (so a dataset's files are listed only when needed).
            compute_boundary_iou: report Boundary IoU (needs fewer than 255 classes, as in
                detectron2, because the boundary maps are uint8 images).
            dilation_ratio: boundary width relative to the image diagonal.
            num_report_samples: images of this rank kept for the report's sample grid.
            write_report: write ``report.html`` with charts into `output_dir`.
            max_image_pixels: pixel budget of the ground-truth files (INPUT.MAX_IMAGE_PIXELS),
                checked from their headers before decoding; None: the data layer's default
                (Pillow's limit), 0 or negative: no limit.
        """
        self.metadata: Metadata = as_metadata(
            metadata, num_classes=num_classes, ignore_label=ignore_label
        )
        self._num_classes = self.metadata.num_classes
        self._ignore_label = self.metadata.ignore_label
        self._output_dir = Path(output_dir) if output_dir else None
        self._distributed = distributed
        self._dilation_ratio = dilation_ratio
        self._compute_boundary_iou = compute_boundary_iou
        if compute_boundary_iou and self._num_classes >= np.iinfo(np.uint8).max:
            logger.warning(
                "Boundary IoU needs fewer than 255 classes (uint8 boundary maps); dataset '%s' "
                "has %d, so it is not computed",
                self.metadata.name,
                self._num_classes,
            )
            self._compute_boundary_iou = False
        self._records = records
        self._gt_records: dict[str, dict[str, Any]] | None = None
        self._num_report_samples = num_report_samples
        self._write_report = write_report
        if max_image_pixels is None:
            from atrous.data import DEFAULT_MAX_IMAGE_PIXELS

            max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS
        self._max_image_pixels = int(max_image_pixels)
        self.reset()

    # -- accumulation -----------------------------------------------------------------------

    def reset(self) -> None:
        self._conf: torch.Tensor | None = None
        self._b_conf: torch.Tensor | None = None
        self._num_images = 0
        self._samples: list[dict[str, Any]] = []

    def _gt_record_for(self, inp: dict[str, Any]) -> dict[str, Any] | None:
        """The label file of an input and how its dataset decodes it (`LABEL_RECORD_KEYS`)."""
        from atrous.data import LABEL_RECORD_KEYS

        if inp.get("sem_seg_file_name"):
            return {k: inp[k] for k in LABEL_RECORD_KEYS if k in inp}
        file_name = inp.get("file_name")
        if file_name is None:
            return None
        if self._gt_records is None:
            records = self._records() if callable(self._records) else self._records
            self._gt_records = {
                str(r["file_name"]): r for r in records or [] if r.get("sem_seg_file_name")
            }
        return self._gt_records.get(str(file_name))

    def _load_gt(self, inp: dict[str, Any], shape: tuple[int, int], device: torch.device):
        from atrous.data import load_sem_seg

        record = self._gt_record_for(inp)
        gt_file = None if record is None else str(record["sem_seg_file_name"])
        if record is not None:
            # Training labels, exactly as the mapper produces them (e.g. ADE20K's shift by one).
            label = load_sem_seg(record, max_pixels=self._max_image_pixels)
            gt = torch.from_numpy(label.astype(np.int64)).to(device)
            source = gt_file
        elif "sem_seg" in inp:
            gt = torch.as_tensor(inp["sem_seg"]).to(device=device, dtype=torch.int64)
            source = f"input['sem_seg'] of {inp.get('file_name', '<no file_name>')}"
        else:
            raise KeyError(
                f"no ground truth for {inp.get('file_name', '<input without file_name>')}: the "
                "input has no 'sem_seg_file_name' and no 'sem_seg', and the dataset records do "
                "not list it"
            )
        if tuple(gt.shape) != shape:
            raise ValueError(
                f"{source}: ground truth is {tuple(gt.shape)} but the prediction is {shape}; "
                "the model must return logits at the input's 'height' x 'width'"
            )
        ignored = gt == self._ignore_label
        bad = (~ignored) & ((gt < 0) | (gt >= self._num_classes))
        if bool(bad.any()):
            values = sorted(set(gt[bad].unique().tolist()))[:10]
            raise ValueError(
                f"{source}: label values {values} are neither class ids in [0, "
                f"{self._num_classes}) nor the ignore label {self._ignore_label}; is this a "
                "labelIds file where trainIds were expected?"
            )
        return torch.where(ignored, torch.full_like(gt, self._num_classes), gt), gt_file

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs, strict=True):
            scores = out["sem_seg"] if isinstance(out, dict) else out
            if scores.dim() != 3:
                raise ValueError(
                    f"expected output 'sem_seg' of shape (C, H, W), got {tuple(scores.shape)}"
                )
            pred = scores.argmax(dim=0)
            device = pred.device
            gt, gt_file = self._load_gt(inp, tuple(pred.shape), device)
            n = self._num_classes + 1
            if self._conf is None:
                self._conf = torch.zeros(n, n, dtype=torch.int64, device=device)
                self._b_conf = torch.zeros(n, n, dtype=torch.int64, device=device)
            accumulate_confusion(self._conf, pred, gt, self._num_classes)
            pred_np = gt_np = None
            if self._compute_boundary_iou or len(self._samples) < self._num_report_samples:
                pred_np = pred.to(torch.uint8).cpu().numpy()
                gt_np = gt.to(torch.uint8).cpu().numpy()
            if self._compute_boundary_iou:
                b_pred = torch.from_numpy(mask_to_boundary(pred_np, self._dilation_ratio))
                b_gt = torch.from_numpy(mask_to_boundary(gt_np, self._dilation_ratio))
                accumulate_confusion(self._b_conf, b_pred, b_gt, self._num_classes)
            if len(self._samples) < self._num_report_samples:
                self._samples.append(
                    {
                        "file_name": inp.get("file_name"),
                        "gt_file": gt_file,
                        "pred": pred_np,
                        # ignored pixels back to the dataset's ignore value for drawing
                        "gt": np.where(gt_np == self._num_classes, 255, gt_np).astype(np.uint8),
                    }
                )
            self._num_images += 1

    # -- reduction --------------------------------------------------------------------------

    def _reduced(self) -> tuple[np.ndarray, np.ndarray, int]:
        n = self._num_classes + 1
        conf = self._conf if self._conf is not None else torch.zeros(n, n, dtype=torch.int64)
        b_conf = self._b_conf if self._b_conf is not None else torch.zeros_like(conf)
        count = torch.tensor([self._num_images], dtype=torch.int64, device=conf.device)
        if self._distributed and comm.is_distributed():
            # NCCL reduces CUDA tensors only; gloo reduces CPU tensors. A rank that saw no image
            # has a CPU matrix, so move everything to the backend's device first.
            device = comm.collective_device()
            stacked = torch.cat([conf.reshape(-1), b_conf.reshape(-1), count.to(conf.device)])
            stacked = comm.all_reduce_sum(stacked.to(device))
            conf = stacked[: n * n].reshape(n, n)
            b_conf = stacked[n * n : 2 * n * n].reshape(n, n)
            count = stacked[2 * n * n :]
        return conf.cpu().numpy(), b_conf.cpu().numpy(), int(count.item())

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Metrics over everything processed (on all ranks); files written by rank 0 only.

        Returns:
            ``{"sem_seg": metrics}`` on every rank (see `metrics_from_confusion`).
        """
        conf, b_conf, num_images = self._reduced()
        if num_images == 0:
            logger.warning("SemSegEvaluator: no image was processed; metrics are NaN")
        names = self.metadata.stuff_classes
        res = metrics_from_confusion(conf, names, b_conf if self._compute_boundary_iou else None)
        if comm.is_main_process():
            logger.info(
                "Semantic segmentation on '%s' (%d images):\n%s",
                self.metadata.name,
                num_images,
                format_per_class_table(res, names),
            )
            if self._output_dir is not None:
                self._write_outputs(res, conf, num_images)
        return {"sem_seg": dict(res)}

    def _write_outputs(self, res: dict[str, float], conf: np.ndarray, num_images: int) -> None:
        out = self._output_dir
        assert out is not None
        names = self.metadata.stuff_classes
        atomic_write_json(
            out / "sem_seg_evaluation.json",
            {"dataset": self.metadata.name, "num_images": num_images, "metrics": res},
        )
        buf = io.StringIO()
        columns = ["class", "IoU", "ACC", "BoundaryIoU", "gt_pixels", "pred_pixels"]
        buf.write(",".join(columns) + "\n")
        gt_pixels = conf[:-1, :-1].sum(axis=0)
        pred_pixels = conf[:-1, :-1].sum(axis=1)
        for i, name in enumerate(names):
            values = [res.get(f"{k}-{name}", math.nan) for k in ("IoU", "ACC", "BoundaryIoU")]
            cells = ["" if math.isnan(v) else f"{v:.6f}" for v in values]
            quoted = '"' + name.replace('"', '""') + '"'
            buf.write(",".join([quoted, *cells, str(gt_pixels[i]), str(pred_pixels[i])]) + "\n")
        atomic_write_text(out / "sem_seg_per_class.csv", buf.getvalue())
        atomic_write_json(
            out / "sem_seg_confusion_matrix.json",
            {
                "layout": "conf[pred][gt]; the last row/column counts ignored ground truth",
                "classes": list(names),
                "matrix": conf.tolist(),
            },
        )
        if self._write_report:
            from .report import write_report

            write_report(
                out,
                metrics=res,
                conf=conf,
                metadata=self.metadata,
                samples=self._samples,
            )
