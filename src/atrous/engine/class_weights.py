"""MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS resolved to numbers before the model is built.

A list in the config is used as it is. A method name ("median_frequency",
"inverse_sqrt_frequency") is computed from the labels of DATASETS.TRAIN by the code behind
`atrous check-dataset` (`atrous.data.statistics`), on rank 0, and shared with the other ranks.
The result is cached in ``OUTPUT_DIR/class_weights.json`` under a key made of the method, the
dataset names, the class count and a hash of the label files (paths, sizes, modification
times): a resumed run reads it back, a changed dataset is counted again. The modeling layer
never sees the data layer: `atrous.modeling.build_model` receives the list.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atrous.utils import comm

__all__ = ["CACHE_NAME", "resolve_class_weights", "training_label_key"]

logger = logging.getLogger(__name__)

CACHE_NAME = "class_weights.json"


def training_label_key(records: Sequence[dict]) -> str:
    """SHA-256 over the records' label files: path, size and modification time of each.

    Cheap (one ``stat`` per file) and changes when a label is added, removed or rewritten.
    """
    digest = hashlib.sha256()
    for r in records:
        path = str(r.get("sem_seg_file_name") or "")
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{r.get('file_name')}\0{path}\0{stamp}\n".encode())
    return digest.hexdigest()


def _compute(cfg: Any, method: str) -> list[float]:
    from atrous.data import get_dataset_records, get_metadata
    from atrous.data.statistics import class_weights, compute_statistics

    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS {method!r} is computed from DATASETS.TRAIN, "
            "which is empty"
        )
    records = [r for name in names for r in get_dataset_records(name, read_sizes=False)]
    meta = get_metadata(names[0])
    key = {
        "method": method,
        "datasets": names,
        "num_classes": int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
        "labels_sha256": training_label_key(records),
    }
    cache = Path(cfg.OUTPUT_DIR) / CACHE_NAME if cfg.OUTPUT_DIR else None
    if cache is not None and cache.is_file():
        try:
            stored = json.loads(cache.read_text())
        except (OSError, ValueError, RecursionError):
            stored = None
        usable = _stored_weights(stored, key["num_classes"])
        if usable is None:
            logger.warning("%s is not a class-weights cache atrous wrote; counting again", cache)
        elif stored.get("key") == key:
            logger.info("Class weights (%s) from %s: %s", method, cache, _fmt(usable))
            return usable
        else:
            logger.info("%s was computed for other training data; counting again", cache)
    logger.info(
        "Counting class pixels of %d training labels for CLASS_WEIGHTS %r", len(records), method
    )
    stats = compute_statistics(
        records,
        class_names=meta.stuff_classes,
        ignore_label=meta.ignore_label,
        workers=int(cfg.DATALOADER.NUM_WORKERS),
        max_pixels=cfg.INPUT.MAX_IMAGE_PIXELS,
        read_images=False,
        progress=False,
    )
    # Training would stop at such a label too; empty masks and repeated entries it accepts.
    fatal = [p for p in stats.problems if p["kind"] not in ("duplicate_entry", "empty")]
    if fatal:
        from atrous.data import DatasetError

        raise DatasetError(
            f"cannot count classes for CLASS_WEIGHTS {method!r}: {fatal[0]['message']} (run "
            f"`atrous check-dataset` on the training split to list all {len(fatal)} such files)"
        )
    weights = class_weights(stats, method)
    logger.info(
        "Class weights (%s): %s",
        method,
        ", ".join(f"{n} {w:.4g}" for n, w in zip(meta.stuff_classes, weights, strict=True)),
    )
    if cache is not None:
        from atrous.utils.file_io import atomic_write_json

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            cache,
            {
                "key": key,
                "weights": weights,
                "classes": list(meta.stuff_classes),
                "pixels": stats.pixels.tolist(),
                "images": stats.images.tolist(),
            },
        )
    return weights


def _stored_weights(stored: Any, num_classes: int) -> list[float] | None:
    """The weights of a cache file's content, or None when it is not what this module writes
    (edited, damaged): `num_classes` finite positive numbers under ``"weights"``."""
    import math

    if not isinstance(stored, dict):
        return None
    weights = stored.get("weights")
    if (
        not isinstance(weights, list)
        or len(weights) != num_classes
        or not all(type(w) in (int, float) and math.isfinite(w) and w > 0 for w in weights)
    ):
        return None
    return [float(w) for w in weights]


def _fmt(weights: Sequence[float]) -> str:
    return "[" + ", ".join(f"{w:.4g}" for w in weights) + "]"


def resolve_class_weights(cfg: Any) -> list[float] | None:
    """The loss's class weights that the config asks for.

    Args:
        cfg: the run's config (MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS, DATASETS.TRAIN, OUTPUT_DIR,
            DATALOADER.NUM_WORKERS, INPUT.MAX_IMAGE_PIXELS).

    Returns:
        None (unweighted) or one float per class. In a distributed run every rank gets rank
        0's result.

    Raises:
        DatasetError: the training labels cannot be counted (on every rank).
    """
    value = cfg.MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return None
    if not isinstance(value, str):
        return [float(w) for w in value]
    weights, error = None, None
    if comm.is_main_process():
        try:
            weights = _compute(cfg, value)
        except Exception as e:  # every rank must leave the gather below, then fail alike
            error = e
    shared = comm.all_gather_object((weights, None if error is None else str(error)))[0]
    if error is not None:
        raise error
    if shared[1] is not None:
        from atrous.data import DatasetError

        raise DatasetError(shared[1])
    return shared[0]
