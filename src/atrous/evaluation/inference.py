"""Run a model over a dataset and evaluate it; choose the evaluator a dataset asks for."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
    overlap: bool | None = None,
) -> dict[str, dict[str, float]]:
    """Run `model` on every batch of `data_loader` and return the evaluator's metrics.

    With `overlap`, the evaluator scores batch i on a helper thread while the model computes
    batch i + 1: its per-image CPU work (reading and decoding ground truth, Boundary IoU's
    erosions, encoding Cityscapes PNGs) then no longer leaves a GPU waiting. At most one batch
    is scored at a time, so the outputs of two batches are alive at once, not more; the
    results are those of the serial loop.

    Args:
        model: a segmentor or a wrapper from `build_inference_model` (list of dicts in, list of
            ``{"sem_seg": (C, height, width)}`` out), or a `Predictor` (its inference model is
            used). Put in eval mode for the run and restored afterwards.
        data_loader: yields lists of input dicts (``image``, ``height``, ``width``,
            ``file_name``, ...); in a multi-process run each rank iterates over its shard.
        evaluator: receives every batch; None runs inference only and returns ``{}``.
        log_period_s: seconds between progress messages.
        overlap: score on a helper thread; default: when the model runs on a GPU (on the CPU
            the thread would only compete with the model for the cores, and hold a second
            batch's full-size logits in memory).

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
    if overlap is None:
        overlap = _runs_on_gpu(inference_model)
    scorer = ThreadPoolExecutor(1, thread_name_prefix="atrous-eval") if overlap else None
    scoring: Future | None = None
    with _eval_mode(inference_model), torch.no_grad(), _shut_down(scorer):
        for inputs in data_loader:
            t0 = time.perf_counter()
            outputs = inference_model(inputs)
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            compute += time.perf_counter() - t0
            if scoring is not None:
                scoring.result()  # the previous batch's error, raised here; and a bound
            if scorer is None:
                evaluator.process(inputs, outputs)
            else:
                scoring = scorer.submit(_score, evaluator, inputs, outputs)
            # Full-size logits (C, height, width) of this batch must not stay alive here while
            # the next batch's are computed: that would double the peak memory (the helper
            # thread holds them while scoring, by choice).
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
        if scoring is not None:
            scoring.result()
    elapsed = time.perf_counter() - start
    logger.info(
        "Inference on %d batches took %s (%.4f s/batch, model %.4f s/batch)",
        count,
        datetime.timedelta(seconds=int(elapsed)),
        elapsed / max(count, 1),
        compute / max(count, 1),
    )
    return evaluator.evaluate() or {}


def _score(evaluator: DatasetEvaluator, inputs: Any, outputs: Any) -> None:
    with torch.no_grad():  # grad mode is per thread
        evaluator.process(inputs, outputs)


@contextlib.contextmanager
def _shut_down(executor: ThreadPoolExecutor | None):
    try:
        yield
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def _runs_on_gpu(model: Any) -> bool:
    """Whether `model` (a segmentor, a wrapper with ``device``, or a graph) computes on CUDA."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(model, nn.Module):
        parameter = next(model.parameters(), None)
        return parameter is not None and parameter.device.type == "cuda"
    return False


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
    from atrous.utils.folders import safe_dataset_dirname

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
