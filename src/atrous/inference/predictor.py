"""`Predictor`: config + weights (or a model bundle folder) -> a callable that segments images."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .confidence import Confidence, confidence_from_logits
from .sliding_window import SlidingWindowInference
from .tta import SemanticSegmentorWithTTA

__all__ = [
    "Predictor",
    "SegmentationResult",
    "build_inference_model",
    "check_prediction_memory",
    "labels_from_scores",
    "prediction_bytes",
]

logger = logging.getLogger(__name__)


def build_inference_model(cfg: Any, model: nn.Module) -> nn.Module:
    """Wrap a segmentor for inference as the config asks, keeping its forward contract.

    Applied in this order: the fast path (``TEST.FAST``, from `atrous.deploy`, on a copy so the
    training model is untouched), sliding windows (``TEST.SLIDING_WINDOW``) and test-time
    augmentation (``TEST.AUG``; each scale then runs through the sliding windows).

    Args:
        cfg: the config.
        model: a built segmentor.

    Returns:
        A module taking a list of ``{"image", "height", "width"}`` dicts and returning
        ``[{"sem_seg": (C, height, width)}]``; the model itself when nothing is enabled.
    """
    test = cfg.TEST
    if test.FAST.ENABLED:
        from atrous.deploy import optimize_for_inference

        model = optimize_for_inference(
            model,
            dtype=test.FAST.DTYPE,
            channels_last=test.FAST.CHANNELS_LAST,
            fold_bn=test.FAST.FOLD_BN,
            compile=test.FAST.COMPILE,
        )
    if test.SLIDING_WINDOW.ENABLED:
        from atrous.modeling import max_output_bytes

        model = SlidingWindowInference(
            model,
            window=tuple(test.SLIDING_WINDOW.SIZE),
            stride=tuple(test.SLIDING_WINDOW.STRIDE),
            max_output_bytes=max_output_bytes(cfg),
        )
    if test.AUG.ENABLED:
        model = SemanticSegmentorWithTTA(
            model, min_sizes=test.AUG.MIN_SIZES, max_size=test.AUG.MAX_SIZE, flip=test.AUG.FLIP
        )
    return model


def prediction_bytes(
    *, num_classes: int, height: int, width: int, tta: bool, confidence: bool
) -> int:
    """Peak memory of one image's prediction at its output size, in bytes.

    The float32 logits (three full-size buffers with TEST.AUG: the running sum of the
    probabilities, one pass's logits and their softmax) and, while they exist, what is kept per
    pixel: int64 labels and, when asked for, the two float32 confidence maps (computed a slice
    of rows at a time). Pictures are drawn from the labels after the logits are freed, and take
    less than them.
    """
    logits = 4 * int(num_classes) * int(height) * int(width)
    per_pixel = 8 + (8 if confidence else 0)
    return logits * (3 if tta else 1) + per_pixel * int(height) * int(width)


def check_prediction_memory(
    *,
    num_classes: int,
    height: int,
    width: int,
    max_bytes: int,
    tta: bool,
    confidence: bool,
    name: str = "image",
) -> None:
    """Refuse, before the model runs, a prediction whose buffers exceed TEST.MAX_OUTPUT_MB.

    Raises:
        OutputTooLargeError: naming the image, the size, the memory and the config key.
    """
    from atrous.modeling import OutputTooLargeError

    need = prediction_bytes(
        num_classes=num_classes, height=height, width=width, tta=tta, confidence=confidence
    )
    if max_bytes <= 0 or need <= max_bytes:
        return
    what = ", ".join(
        ["logits x3 for TEST.AUG" if tta else "logits", "labels"]
        + (["confidence maps"] if confidence else [])
    )
    raise OutputTooLargeError(
        f"{name}: its prediction at {height}x{width} (HxW) with {num_classes} classes would take "
        f"{need / 2**20:,.0f} MiB ({what}), more than TEST.MAX_OUTPUT_MB "
        f"({max_bytes / 2**20:,.0f} MiB); refused before running the model. Raise "
        "TEST.MAX_OUTPUT_MB (0: no limit) if the memory is there, or downscale the image."
    )


def labels_from_scores(scores: torch.Tensor) -> np.ndarray:
    """The class of every pixel: int64 ``(H, W)`` from ``(C, H, W)`` scores.

    The indices of ``max`` over the classes: the same as ``argmax`` (the first of tied maxima,
    NaN counted as the largest), in about half its time on CPUs, where ``argmax`` over the
    outer dimension of a contiguous tensor is the slower kernel; int64 already, so no second
    ``(H, W)`` copy is made.
    """
    return scores.max(dim=0).indices.cpu().numpy()


@dataclass
class SegmentationResult:
    """One image's prediction at its original size.

    Attributes:
        labels: int64 class ids ``(H, W)``.
        probabilities: float32 softmax probabilities ``(C, H, W)``, or None when not requested.
        confidence: per-pixel max probability and entropy ``(H, W)`` (see
            `atrous.inference.confidence`), or None when not requested.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    confidence: Confidence | None = None


class Predictor:
    """Segments numpy images with the model a config describes.

    Builds the model (``atrous.modeling.build_model``), loads ``MODEL.WEIGHTS`` (path, URL or
    model-zoo name, through ``atrous.checkpoint.Checkpointer``), and wraps it with the fast path,
    sliding windows and test-time augmentation as ``TEST.*`` asks (see `build_inference_model`).

    Images are given as **RGB** ``(H, W, 3)`` uint8 arrays (what Pillow reads); they are converted
    to ``INPUT.FORMAT``, resized with ResizeShortestEdge(``INPUT.MIN_SIZE_TEST``,
    ``INPUT.MAX_SIZE_TEST``) and the prediction is returned at the original size.

    A model bundle folder (``atrous export --format bundle``) can be given instead of a config:
    ``Predictor("bundle_dir")`` or `Predictor.from_bundle` (which also takes overrides); its
    ``bundle.json`` is then `metadata` (class names, colours).

    Example::

        predictor = Predictor(cfg)                 # or Predictor("my_bundle/")
        result = predictor(np.asarray(Image.open("street.png").convert("RGB")))
        result.labels  # (H, W) class ids
    """

    def __init__(
        self, cfg: Any, *, model: nn.Module | None = None, metadata: Any | None = None
    ) -> None:
        """
        Args:
            cfg: the config (not modified), or the path of a model bundle folder.
            model: an already built and loaded segmentor to use instead of building one.
            metadata: what `metadata` should hold (set by `from_bundle`); None otherwise.
        """
        if isinstance(cfg, str | os.PathLike):
            if model is not None:
                raise ValueError("a model bundle brings its own model; do not pass model=")
            from atrous.checkpoint.bundle_reader import load_bundle

            bundle = load_bundle(cfg)
            cfg, model, metadata = bundle.cfg, bundle.model, bundle.metadata
        self.cfg = cfg.clone()
        # `atrous.checkpoint.bundle_reader.BundleMetadata` for bundles (stuff_classes, ...)
        self.metadata = metadata
        if model is None:
            from atrous.checkpoint import Checkpointer
            from atrous.modeling import build_model

            model = build_model(self.cfg)
            weights = self.cfg.MODEL.WEIGHTS
            if weights:
                # the checkpointer logs what matched, what is missing and what went unused
                Checkpointer(model).load(weights)
            else:
                logger.warning("MODEL.WEIGHTS is empty: predicting with untrained weights")
        self.model = model.eval()
        self.inference_model = build_inference_model(self.cfg, self.model).eval()
        self.input_format = self.cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}")
        self.min_size = int(self.cfg.INPUT.MIN_SIZE_TEST)
        self.max_size = int(self.cfg.INPUT.MAX_SIZE_TEST)
        # The test loader's mapping (format, ResizeShortestEdge): one place for the resize.
        from atrous.data import build_mapper

        self._mapper = build_mapper(self.cfg, is_train=False)

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        *,
        opts: Sequence[str] = (),
        device: str | None = None,
    ) -> Predictor:
        """A predictor for a model bundle folder.

        Args:
            path: the folder (verified: missing, edited or mismatched files are refused).
            opts: ``KEY VALUE`` config overrides, e.g. ``["TEST.AUG.ENABLED", "True"]``.
            device: overrides MODEL.DEVICE (the bundled config says "auto").

        Raises:
            atrous.checkpoint.BundleError: the folder is not a valid bundle.
        """
        from atrous.checkpoint.bundle_reader import load_bundle

        bundle = load_bundle(path, opts=opts, device=device)
        return cls(bundle.cfg, model=bundle.model, metadata=bundle.metadata)

    def _to_input(self, image: np.ndarray, index: int) -> dict[str, Any]:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"image {index}: expected an (H, W, 3) uint8 RGB array, got shape "
                f"{image.shape} dtype {image.dtype}"
            )
        return self._mapper.map_image(image)

    def __call__(
        self,
        image: np.ndarray,
        *,
        return_probabilities: bool = False,
        return_confidence: bool = False,
    ) -> SegmentationResult:
        """Segment one RGB ``(H, W, 3)`` uint8 image."""
        return self.predict_batch(
            [image],
            return_probabilities=return_probabilities,
            return_confidence=return_confidence,
        )[0]

    @torch.no_grad()
    def predict_batch(
        self,
        images: Sequence[np.ndarray],
        *,
        batch_size: int = 1,
        return_probabilities: bool = False,
        return_confidence: bool = False,
    ) -> list[SegmentationResult]:
        """Segment several RGB images, `batch_size` at a time.

        ``return_probabilities`` adds the ``(C, H, W)`` softmax, ``return_confidence`` only the
        ``(H, W)`` max probability and entropy (C times less memory).

        Only images of the same (resized) size share a batch: padding would change the image
        pooling of ASPP and so the result, and batching must not.

        Every image's prediction is checked against TEST.MAX_OUTPUT_MB (`prediction_bytes`)
        before the model runs.

        Returns:
            One `SegmentationResult` per image, in order.

        Raises:
            OutputTooLargeError: an image's prediction would exceed TEST.MAX_OUTPUT_MB.
        """
        inputs = [self._to_input(img, i) for i, img in enumerate(images)]
        from atrous.modeling import max_output_bytes

        budget = max_output_bytes(self.cfg)
        num_classes = int(self.cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        for i, inp in enumerate(inputs):
            check_prediction_memory(
                num_classes=num_classes,
                height=int(inp["height"]),
                width=int(inp["width"]),
                max_bytes=budget,
                tta=bool(self.cfg.TEST.AUG.ENABLED),
                confidence=return_confidence or return_probabilities,
                name=f"image {i}",
            )
        groups: dict[tuple[int, int], list[int]] = {}
        for i, inp in enumerate(inputs):
            groups.setdefault(tuple(inp["image"].shape[-2:]), []).append(i)
        results: list[SegmentationResult | None] = [None] * len(inputs)
        for indices in groups.values():
            for start in range(0, len(indices), max(1, batch_size)):
                chunk = indices[start : start + max(1, batch_size)]
                outputs = self.inference_model([inputs[i] for i in chunk])
                for i, out in zip(chunk, outputs):
                    scores = out["sem_seg"].float()
                    probs = scores.softmax(dim=0).cpu().numpy() if return_probabilities else None
                    results[i] = SegmentationResult(
                        labels=labels_from_scores(scores),
                        probabilities=probs,
                        confidence=confidence_from_logits(scores) if return_confidence else None,
                    )
                # this chunk's full-size logits must not live on while the next is computed
                outputs = scores = None
        return [r for r in results if r is not None]
