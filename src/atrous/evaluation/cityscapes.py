"""The official Cityscapes pixel-level evaluation, run in-process through cityscapesscripts.

Predictions (trainIds 0-18) are converted to labelIds with cityscapesscripts' own label table and
written as PNGs; the library then finds them for each ``*_gtFine_labelIds.png`` with its own
`getPrediction` and scores them with `evaluateImgLists`. The numbers are therefore the library's:
IoU and iIoU over classes and categories. Unlike `SemSegEvaluator`, a class that is predicted but
absent from the ground truth scores IoU 0 here (the script's definition), not NaN.

Two incompatibilities of cityscapesscripts 2.3 with current libraries are handled here, without
environment variables and without changing the library's arithmetic:

* It reads its settings from a module-global ``args`` object that it fills from environment
  variables at import time. We pass a private copy with our paths instead.
* Its instance-level path (iIoU) calls ``np.in1d``, which numpy 2.4 removed. When numpy lacks it,
  ``np.in1d`` is defined for the duration of the call as the function numpy documented as its
  replacement, ``np.isin(ar1, ar2, ...).ravel()``, so the instance statistics are still the
  library's own. When the ground truth has no ``*_gtFine_instanceIds.png`` files the instance
  score is switched off and iIoU is reported as NaN (the library would print 0).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from atrous.utils import comm

from ..data.metadata import Metadata, as_metadata
from ..utils.file_io import atomic_write_json
from .evaluator import DatasetEvaluator

__all__ = [
    "CityscapesSemSegEvaluator",
    "cityscapes_prediction_name",
    "evaluate_cityscapes_files",
    "train_id_to_label_id_lut",
]

logger = logging.getLogger(__name__)

_CITYSCAPES_STEM = re.compile(r"^([A-Za-z\-]+)_(\d{6})_(\d{6})")


def train_id_to_label_id_lut(class_names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Lookup table from our class index to the Cityscapes labelId, from cityscapesscripts.

    Classes are matched by name, so a dataset whose classes are not Cityscapes' evaluated
    classes (or are in another order) is caught instead of being scored against wrong labels.

    Returns:
        uint8 array ``(C,)``.

    Raises:
        ValueError: a class name is not one of Cityscapes' evaluated labels.
    """
    from cityscapesscripts.helpers.labels import name2label

    lut = np.zeros(len(class_names), dtype=np.uint8)
    for i, name in enumerate(class_names):
        label = name2label.get(name)
        if label is None or label.ignoreInEval:
            raise ValueError(
                f"class {i} '{name}' is not an evaluated Cityscapes label; the official "
                "evaluation needs the 19 Cityscapes classes (use evaluator_type 'sem_seg' for "
                "other datasets)"
            )
        lut[i] = label.id
    return lut


def cityscapes_prediction_name(file_name: str | os.PathLike[str], suffix: str = "pred") -> str:
    """PNG name for the prediction of a Cityscapes image, as the benchmark matches it.

    The official script looks for ``<city>_<seq>_<frame>*.png`` for every ground-truth file, so
    ``frankfurt_000000_000294_leftImg8bit.png`` becomes
    ``frankfurt_000000_000294_leftImg8bit_<suffix>.png``.

    Raises:
        ValueError: the name does not start with ``<city>_<6 digits>_<6 digits>``.
    """
    stem = Path(file_name).stem
    if not _CITYSCAPES_STEM.match(stem):
        raise ValueError(
            f"{file_name}: not a Cityscapes file name (<city>_<seq>_<frame>_leftImg8bit.png); "
            "the benchmark matches predictions to ground truth by that prefix"
        )
    return f"{stem}_{suffix}.png"


@contextlib.contextmanager
def _numpy_in1d_for_cityscapesscripts():
    if hasattr(np, "in1d"):
        yield
        return

    def in1d(ar1, ar2, assume_unique=False, invert=False, *, kind=None):
        return np.isin(
            np.asarray(ar1), ar2, assume_unique=assume_unique, invert=invert, kind=kind
        ).ravel()

    np.in1d = in1d  # removed in numpy 2.4; see the module docstring
    try:
        yield
    finally:
        del np.in1d


def _instance_level_files(
    gt_files: list[str], instance_level: bool | None
) -> tuple[list[str], bool]:
    """The ``*_gtFine_instanceIds.png`` next to each ground truth, and whether to compute iIoU.

    Args:
        gt_files: ``*_gtFine_labelIds.png`` paths (non-empty).
        instance_level: as in :func:`evaluate_cityscapes_files`; None: when every instance file
            exists (a warning is logged when not).

    Returns:
        ``(instance_files, instance_level)`` with `instance_level` resolved to a bool.

    Raises:
        FileNotFoundError: `instance_level` is True and an instance file is missing.
    """
    instance_files = [f.replace("labelIds", "instanceIds") for f in gt_files]
    have_instances = all(os.path.isfile(f) for f in instance_files)
    if instance_level is None:
        instance_level = have_instances
        if not have_instances:
            logger.warning(
                "no *_gtFine_instanceIds.png next to the ground truth (e.g. %s); iIoU is not "
                "computed",
                instance_files[0],
            )
    elif instance_level and not have_instances:
        missing = next(f for f in instance_files if not os.path.isfile(f))
        raise FileNotFoundError(f"instance-level evaluation needs {missing}")
    return instance_files, bool(instance_level)


def _evaluation_args(
    library_args: Any, prediction_dir: str | os.PathLike[str], *, instance_level: bool
) -> Any:
    """A private copy of cityscapesscripts' settings for one quiet, non-interactive run.

    Args:
        library_args: the library's module-global ``args`` (left untouched).
        prediction_dir: where `getPrediction` looks for the prediction PNGs.
        instance_level: compute iIoU.

    Returns:
        The copied settings object.
    """
    args = copy.copy(library_args)
    args.predictionPath = os.path.abspath(prediction_dir)
    args.predictionWalk = None
    args.evalInstLevelScore = bool(instance_level)
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.colorized = False
    args.bold = args.nocol = ""
    args.quiet = True
    args.evalLabels = []
    return args


def evaluate_cityscapes_files(
    prediction_dir: str | os.PathLike[str],
    gt_files: list[str],
    *,
    instance_level: bool | None = None,
    export_file: str | os.PathLike[str] | None = None,
    max_image_pixels: int | None = None,
) -> dict[str, Any]:
    """Run cityscapesscripts' `evaluateImgLists` on labelIds prediction PNGs.

    Args:
        prediction_dir: searched recursively for ``<city>_<seq>_<frame>*.png`` per ground truth,
            with the library's `getPrediction`.
        gt_files: ``*_gtFine_labelIds.png`` paths.
        instance_level: compute iIoU; None means "when every ``*_gtFine_instanceIds.png`` exists".
        export_file: where to write the library's full result dictionary as JSON.
        max_image_pixels: pixel budget of the ground-truth files (INPUT.MAX_IMAGE_PIXELS),
            checked from their headers before the library decodes them; None: the data layer's
            default (Pillow's limit), 0 or negative: no limit.

    Returns:
        The library's result dictionary (``averageScoreClasses``, ``classScores``, ...).

    Raises:
        ImageTooLargeError: a ground-truth file has more pixels than `max_image_pixels`.
        RuntimeError: the library reported an error (missing or duplicate prediction, size
            mismatch); its message is included.
    """
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_eval

    from atrous.data import DEFAULT_MAX_IMAGE_PIXELS, check_image_size

    if not gt_files:
        raise ValueError("no ground-truth files to evaluate")
    instance_files, instance_level = _instance_level_files(gt_files, instance_level)
    if max_image_pixels is None:
        max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS
    # The library decodes these files itself, with Pillow: check their headers first.
    for f in [*gt_files, *(instance_files if instance_level else [])]:
        check_image_size(f, max_image_pixels)

    args = _evaluation_args(cs_eval.args, prediction_dir, instance_level=instance_level)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), _numpy_in1d_for_cityscapesscripts():
            predictions = [cs_eval.getPrediction(args, gt) for gt in gt_files]
            result = cs_eval.evaluateImgLists(predictions, list(gt_files), args)
    except SystemExit as exc:  # the library reports errors with print + sys.exit
        raise RuntimeError(
            f"cityscapesscripts evaluation failed: {log.getvalue().strip()[-2000:]}"
        ) from exc
    if not instance_level:
        for key in ("classInstScores", "categoryInstScores"):
            result[key] = {k: math.nan for k in result[key]}
        result["averageScoreInstClasses"] = math.nan
        result["averageScoreInstCategories"] = math.nan
    if export_file is not None:
        atomic_write_json(export_file, result)
    return result


class CityscapesSemSegEvaluator(DatasetEvaluator):
    """Official Cityscapes IoU / iIoU (classes and categories) through cityscapesscripts.

    Every rank converts its predictions to labelIds PNGs in memory; `evaluate` gathers them to
    rank 0 (so it works across machines without a shared disk), which writes them into a
    temporary folder and runs the library. All ranks return the same results.

    Ground truth: ``<gt_dir>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` when the metadata
    (or `gt_dir`) names the folder, else the input's ``sem_seg_file_name`` with ``labelTrainIds``
    replaced by ``labelIds``.
    """

    def __init__(
        self,
        metadata: Any,
        *,
        output_dir: str | os.PathLike[str] | None = None,
        distributed: bool = True,
        gt_dir: str | os.PathLike[str] | None = None,
        instance_level: bool | None = None,
        max_image_pixels: int | None = None,
    ) -> None:
        """
        Args:
            metadata: the dataset's `atrous.data.Metadata` (or an object with its fields) with the
                19 Cityscapes ``stuff_classes`` and optionally the ``gtFine/<split>`` folder as
                ``gt_root`` (detectron2's ``gt_dir``).
            output_dir: where ``cityscapes_evaluation.json`` (the library's full results) goes.
            distributed: gather predictions from all ranks in `evaluate`.
            gt_dir: folder with ``<city>/*_gtFine_labelIds.png``; overrides the metadata's.
            instance_level: compute iIoU; None means when instanceIds ground truth exists.
            max_image_pixels: pixel budget of the ground-truth files (INPUT.MAX_IMAGE_PIXELS);
                None: the data layer's default (Pillow's limit), 0 or negative: no limit.
        """
        self.metadata: Metadata = as_metadata(metadata)
        self._lut = train_id_to_label_id_lut(self.metadata.stuff_classes)
        gt_dir = gt_dir if gt_dir is not None else self.metadata.gt_root
        self._gt_dir = Path(gt_dir) if gt_dir else None
        self._output_dir = Path(output_dir) if output_dir else None
        self._distributed = distributed
        self._instance_level = instance_level
        self._max_image_pixels = max_image_pixels
        self.reset()

    def reset(self) -> None:
        # (prediction file name, ground-truth labelIds path, PNG bytes)
        self._predictions: list[tuple[str, str, bytes]] = []

    def _gt_file(self, inp: dict[str, Any]) -> str:
        file_name = inp.get("file_name", "")
        stem = Path(file_name).stem
        match = _CITYSCAPES_STEM.match(stem)
        if self._gt_dir is not None and match:
            city = match.group(1)
            return str(self._gt_dir / city / f"{match.group(0)}_gtFine_labelIds.png")
        sem_seg_file = inp.get("sem_seg_file_name")
        if sem_seg_file and "labelTrainIds" in str(sem_seg_file):
            return str(sem_seg_file).replace("labelTrainIds", "labelIds")
        raise KeyError(
            f"cannot locate the Cityscapes labelIds ground truth for {file_name!r}: give the "
            "metadata a gt_dir or inputs a '*_gtFine_labelTrainIds.png' sem_seg_file_name"
        )

    def check_inputs(self, records: list[dict[str, Any]]) -> None:
        """Fail before inference when an input could not be scored (checks names only).

        Raises:
            DatasetError: a file name that the official script cannot match to its ground
                truth (``<city>_<seq>_<frame>``, the city in ASCII letters), or a record whose
                labelIds ground truth cannot be located.
        """
        from atrous.data.errors import DatasetError

        for record in records:
            file_name = str(record.get("file_name", ""))
            stem = Path(file_name).stem
            if not stem.isascii():
                raise DatasetError(
                    f"{file_name}: Cityscapes evaluation needs ASCII file names "
                    "(<city>_<seq>_<frame>, the city in letters A-Z): rename the city folder and "
                    "its files (e.g. 'münchen' -> 'munchen'), or evaluate with a dataset YAML "
                    "(the sem_seg evaluator has no naming rule)."
                )
            try:
                cityscapes_prediction_name(self._gt_file(record).replace("_gtFine_labelIds", ""))
            except (KeyError, ValueError) as error:
                message = error.args[0] if error.args else str(error)
                raise DatasetError(
                    f"Cityscapes evaluation cannot score {file_name}: {message}"
                ) from None

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs, strict=True):
            scores = out["sem_seg"] if isinstance(out, dict) else out
            pred = scores.argmax(dim=0).to(torch.device("cpu"), torch.int64).numpy()
            label_ids = self._lut[pred]
            buf = io.BytesIO()
            Image.fromarray(label_ids).save(buf, format="PNG")
            gt_file = self._gt_file(inp)
            name = cityscapes_prediction_name(gt_file.replace("_gtFine_labelIds", ""))
            self._predictions.append((name, gt_file, buf.getvalue()))

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Official metrics in percent: ``{"sem_seg": {"IoU", "iIoU", "IoU_sup", "iIoU_sup"}}``."""
        predictions = self._predictions
        if self._distributed and comm.is_distributed():
            gathered = comm.all_gather_object(self._predictions)
            predictions = [p for rank_preds in gathered for p in rank_preds]
        results: dict[str, dict[str, float]] | None = None
        error: str | None = None
        if comm.is_main_process():
            try:
                results = self._evaluate_on_main(predictions)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if not (self._distributed and comm.is_distributed()):
                    raise
        if self._distributed and comm.is_distributed():
            # Every rank returns rank 0's numbers (or raises its error) instead of hanging.
            results, error = comm.all_gather_object((results, error))[0]
            if error is not None:
                raise RuntimeError(f"Cityscapes evaluation failed on rank 0: {error}")
        assert results is not None
        return results

    def _evaluate_on_main(self, predictions: list[tuple[str, str, bytes]]):
        unique = {}
        for name, gt_file, data in predictions:
            unique.setdefault(gt_file, (name, data))  # a sampler may repeat an image
        if not unique:
            raise RuntimeError("Cityscapes evaluation: no prediction was processed")
        with tempfile.TemporaryDirectory(prefix="cityscapes_eval_") as tmp:
            for name, data in unique.values():
                (Path(tmp) / name).write_bytes(data)
            export = self._output_dir / "cityscapes_evaluation.json" if self._output_dir else None
            logger.info("Evaluating %d images with cityscapesscripts ...", len(unique))
            result = evaluate_cityscapes_files(
                tmp,
                sorted(unique),
                instance_level=self._instance_level,
                export_file=export,
                max_image_pixels=self._max_image_pixels,
            )
        res = {
            "IoU": 100 * float(result["averageScoreClasses"]),
            "iIoU": 100 * float(result["averageScoreInstClasses"]),
            "IoU_sup": 100 * float(result["averageScoreCategories"]),
            "iIoU_sup": 100 * float(result["averageScoreInstCategories"]),
        }
        lines = [f"{'class':<14} {'IoU':>7} {'iIoU':>7}"]
        for name in self.metadata.stuff_classes:
            iou = 100 * result["classScores"][name]
            iiou = 100 * result["classInstScores"][name]
            lines.append(f"{name:<14} {iou:7.2f} {iiou:7.2f}")
        lines.append(" ".join(f"{k} {v:.2f}" for k, v in res.items()))
        logger.info("Cityscapes official evaluation:\n%s", "\n".join(lines))
        return {"sem_seg": res}
