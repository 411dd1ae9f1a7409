"""Run a model over a dataset and evaluate it; choose the evaluator a dataset asks for."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from atrous.utils import comm

from .evaluator import DatasetEvaluator, DatasetEvaluators

__all__ = ["build_evaluator", "evaluate_datasets", "inference_on_dataset"]

logger = logging.getLogger(__name__)


def build_evaluator(
    cfg: Any, dataset_name: str, output_dir: str | os.PathLike[str] | None = None
) -> DatasetEvaluator:
    """The evaluator for a dataset, chosen by its metadata's ``evaluator_type``.

    * ``"sem_seg"``: `SemSegEvaluator` (detectron2's metrics, Boundary IoU, report).
    * ``"cityscapes_sem_seg"``: the official Cityscapes script (IoU, iIoU, IoU_sup, iIoU_sup) as
      in the original, together with `SemSegEvaluator` for the per-class table and the report;
      both report under ``"sem_seg"``.

    Raises:
        ValueError: unknown evaluator type, or MODEL.SEM_SEG_HEAD.NUM_CLASSES differs from the
            dataset's class count.
        DatasetError: a Cityscapes-style dataset has a file the official script cannot score.
    """
    import functools

    from atrous.data import get_dataset_records, get_metadata

    from .cityscapes import CityscapesSemSegEvaluator
    from .sem_seg import SemSegEvaluator

    # The one place where a dataset name becomes the metadata and records evaluators are given.
    meta = get_metadata(dataset_name)
    evaluator_type = meta.evaluator_type
    max_pixels = int(cfg.INPUT.MAX_IMAGE_PIXELS)
    sem_seg = SemSegEvaluator(
        meta,
        output_dir=output_dir,
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        # Listed only if an input arrives without its label file name.
        records=functools.partial(get_dataset_records, dataset_name),
        max_image_pixels=max_pixels,
    )
    if evaluator_type == "sem_seg":
        return sem_seg
    if evaluator_type == "cityscapes_sem_seg":
        cityscapes = CityscapesSemSegEvaluator(
            meta, output_dir=output_dir, max_image_pixels=max_pixels
        )
        # Names the official script cannot match would fail only after the whole inference.
        cityscapes.check_inputs(get_dataset_records(dataset_name))
        return DatasetEvaluators([cityscapes, sem_seg])
    raise ValueError(
        f"dataset '{dataset_name}' has evaluator_type {evaluator_type!r}; atrous evaluates "
        "'sem_seg' and 'cityscapes_sem_seg'"
    )


@contextlib.contextmanager
def _eval_mode(model: Any):
    # Restores the caller's mode: the trainer evaluates mid-training and continues training.
    if not isinstance(model, nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def inference_on_dataset(
    model: Any,
    data_loader: Iterable[list[dict[str, Any]]],
    evaluator: DatasetEvaluator | None,
    *,
    log_period_s: float = 5.0,
) -> dict[str, dict[str, float]]:
    """Run `model` on every batch of `data_loader` and return the evaluator's metrics.

    Args:
        model: a segmentor or a wrapper from `build_inference_model` (list of dicts in, list of
            ``{"sem_seg": (C, height, width)}`` out), or a `Predictor` (its inference model is
            used). Put in eval mode for the run and restored afterwards.
        data_loader: yields lists of input dicts (``image``, ``height``, ``width``,
            ``file_name``, ...); in a multi-process run each rank iterates over its shard.
        evaluator: receives every batch; None runs inference only and returns ``{}``.
        log_period_s: seconds between progress messages.

    Returns:
        ``evaluator.evaluate()``, e.g. ``{"sem_seg": {"mIoU": ..., ...}}``.
    """
    inference_model = getattr(model, "inference_model", model)
    evaluator = evaluator if evaluator is not None else DatasetEvaluators([])
    total = len(data_loader) if hasattr(data_loader, "__len__") else None
    logger.info(
        "Start inference on %s batches (rank %d of %d)",
        total if total is not None else "?",
        comm.get_rank(),
        comm.get_world_size(),
    )
    evaluator.reset()
    start = last_log = time.perf_counter()
    compute = 0.0
    count = 0
    with _eval_mode(inference_model), torch.no_grad():
        for inputs in data_loader:
            t0 = time.perf_counter()
            outputs = inference_model(inputs)
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            compute += time.perf_counter() - t0
            evaluator.process(inputs, outputs)
            # Full-size logits (C, height, width) of this batch must not stay alive while the
            # next batch's are computed: that would double the peak memory.
            del inputs, outputs
            count += 1
            now = time.perf_counter()
            if now - last_log > log_period_s:
                last_log = now
                per_batch = (now - start) / count
                eta = (
                    f", ETA {datetime.timedelta(seconds=int(per_batch * (total - count)))}"
                    if total is not None
                    else ""
                )
                logger.info(
                    "Inference done %d/%s. %.4f s/batch (model %.4f s)%s",
                    count,
                    total if total is not None else "?",
                    per_batch,
                    compute / count,
                    eta,
                )
    elapsed = time.perf_counter() - start
    logger.info(
        "Inference on %d batches took %s (%.4f s/batch, model %.4f s/batch)",
        count,
        datetime.timedelta(seconds=int(elapsed)),
        elapsed / max(count, 1),
        compute / max(count, 1),
    )
    return evaluator.evaluate() or {}


def evaluate_datasets(
    cfg: Any,
    model: nn.Module,
    datasets: Sequence[str],
    output_dir: str | os.PathLike[str],
    *,
    evaluator_for: Callable[[Any, str, str], DatasetEvaluator] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run `model` over every dataset and score each with its `build_evaluator` evaluator.

    Every loader and evaluator is built before the first inference, so that a dataset the
    evaluator cannot score (e.g. Cityscapes file names the official script cannot match) fails
    in seconds rather than after the other datasets' inference.

    Args:
        model: what runs: a segmentor, or one wrapped by
            `atrous.inference.build_inference_model` as TEST.* asks (fast path, sliding windows,
            TTA), so that training's evaluation and ``atrous evaluate`` measure what ``atrous
            predict`` computes. Put in eval mode for the run and restored afterwards.
        datasets: registered names or ``file.yaml:split`` paths.
        output_dir: each dataset's files go to ``output_dir/<safe_dataset_dirname(name)>``.
        evaluator_for: ``(cfg, name, folder) -> evaluator``; default `build_evaluator` (the
            trainer passes its `build_evaluators` seam).

    Returns:
        ``{dataset: {"sem_seg": {"mIoU": ..., ...}}}`` in the order of `datasets` (empty result
        dicts on the processes that do not evaluate).
    """
    from atrous.data import build_test_loader
    from atrous.utils.output_dir import safe_dataset_dirname

    evaluator_for = evaluator_for or build_evaluator

    jobs = [
        (
            name,
            build_test_loader(cfg, name),
            # A name may be a path ("/data/d.yaml:val"): joined as it is, it would leave the folder.
            evaluator_for(cfg, name, os.path.join(output_dir, safe_dataset_dirname(name))),
        )
        for name in datasets
    ]
    return {
        name: inference_on_dataset(model, loader, evaluator) for name, loader, evaluator in jobs
    }
