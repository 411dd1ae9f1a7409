"""How far the fast inference path's predictions are from the float32 model's, on a dataset.

From the command line: ``atrous benchmark --mode accuracy --config-file CONFIG --dataset NAME
[KEY VALUE ...]``. `compare_fast_path` takes the model with MODEL.WEIGHTS loaded, builds the fast
path from the TEST.FAST keys (whether or not TEST.FAST.ENABLED is set), runs both models on every
image of the dataset and reports the argmax agreement over all pixels, the worst image's
agreement, the largest logit difference, and the mIoU of both (atrous' SemSegEvaluator on the
same predictions).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .fast import optimize_for_inference

__all__ = ["compare_fast_path", "compare_predictions"]


def compare_predictions(
    reference: nn.Module,
    candidate: nn.Module,
    batches: Iterable[list[dict[str, Any]]],
    *,
    evaluators: tuple[Any, Any] | None = None,
) -> dict[str, float]:
    """Run two models with the segmentor's contract on the same inputs and compare them.

    Args:
        reference: the float32 model.
        candidate: the model under test (e.g. from `optimize_for_inference`).
        batches: lists of input dicts, as a test loader yields them.
        evaluators: optional (reference, candidate) evaluators fed the same predictions.

    Returns:
        ``images``, ``pixel_agreement`` (fraction of all pixels with the same argmax),
        ``min_image_agreement`` and ``max_abs_logit_diff``.
    """
    same = total = images = 0
    worst, max_diff = 1.0, 0.0
    for batch in batches:
        with torch.no_grad():
            expected = reference(batch)
            got = candidate(batch)
        for exp, out in zip(expected, got):
            a, b = exp["sem_seg"].float(), out["sem_seg"].float()
            agree = (a.argmax(0) == b.argmax(0)).sum().item()
            same += agree
            total += a.shape[-2] * a.shape[-1]
            worst = min(worst, agree / (a.shape[-2] * a.shape[-1]))
            max_diff = max(max_diff, (a - b).abs().max().item())
            images += 1
        if evaluators is not None:
            evaluators[0].process(batch, expected)
            evaluators[1].process(batch, got)
    if images == 0:
        raise ValueError("No images to compare: the dataset or loader is empty.")
    return {
        "images": images,
        "pixel_agreement": same / total,
        "min_image_agreement": worst,
        "max_abs_logit_diff": max_diff,
    }


def compare_fast_path(
    cfg: Any, dataset_name: str, *, model: nn.Module | None = None
) -> dict[str, Any]:
    """`compare_predictions` of MODEL.WEIGHTS in float32 against its TEST.FAST path on a dataset.

    Args:
        cfg: the config (TEST.FAST, the test loader, MODEL.WEIGHTS).
        dataset_name: a registered name or ``file.yaml:split``.
        model: the float32 model with its weights; None builds `cfg`'s and loads MODEL.WEIGHTS
            as they are (``atrous benchmark --mode accuracy`` passes one that it checked).

    Returns:
        The agreement figures plus ``miou_fp32``, ``miou_fast`` and ``miou_diff`` (points), and
        the fast path's settings.
    """
    from atrous.checkpoint import Checkpointer
    from atrous.data import build_test_loader, get_metadata
    from atrous.evaluation import SemSegEvaluator
    from atrous.modeling import build_model

    if model is None:
        model = build_model(cfg)
        if cfg.MODEL.WEIGHTS:
            Checkpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    fast_cfg = cfg.TEST.FAST
    fast = optimize_for_inference(
        model,
        dtype=fast_cfg.DTYPE,
        channels_last=fast_cfg.CHANNELS_LAST,
        fold_bn=fast_cfg.FOLD_BN,
        compile=fast_cfg.COMPILE,
    )
    evaluators = tuple(
        SemSegEvaluator(
            get_metadata(dataset_name),
            distributed=False,
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            compute_boundary_iou=False,
            write_report=False,
        )
        for _ in range(2)
    )
    for evaluator in evaluators:
        evaluator.reset()
    result: dict[str, Any] = compare_predictions(
        model, fast, build_test_loader(cfg, dataset_name), evaluators=evaluators
    )
    miou = [evaluator.evaluate()["sem_seg"]["mIoU"] for evaluator in evaluators]
    result.update(
        dataset=dataset_name,
        miou_fp32=miou[0],
        miou_fast=miou[1],
        miou_diff=abs(miou[1] - miou[0]) if all(map(math.isfinite, miou)) else float("nan"),
        fast_path={
            "dtype": fast_cfg.DTYPE,
            "channels_last": fast_cfg.CHANNELS_LAST,
            "fold_bn": fast_cfg.FOLD_BN,
            "compile": fast_cfg.COMPILE,
        },
    )
    return result
