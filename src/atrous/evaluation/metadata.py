"""Dataset metadata for the top-level commands: a dataset name (or metadata) -> `Metadata`.

The library has one metadata type, `atrous.data.Metadata`; evaluators take it (or an object with
its fields) as an argument and never look a name up. This module is for the builders at the
top (the bundle writer, ``atrous predict``) that start from a name in a config.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from atrous.data.metadata import Metadata, as_metadata

__all__ = ["model_metadata", "resolve_metadata"]

logger = logging.getLogger(__name__)


def resolve_metadata(
    metadata: Any,
    *,
    num_classes: int | None = None,
    ignore_label: int | None = None,
) -> Metadata:
    """`as_metadata`, but a dataset name is first looked up with `atrous.data.get_metadata`.

    Raises:
        DatasetError: an unknown dataset name.
        ValueError: the class count disagrees with `num_classes`, or nothing defines the classes.
    """
    if isinstance(metadata, str):
        from atrous.data import get_metadata

        metadata = get_metadata(metadata)
    return as_metadata(metadata, num_classes=num_classes, ignore_label=ignore_label)


def model_metadata(cfg: Any, names: Sequence[str] | None = None) -> tuple[Metadata, str | None]:
    """Class names, colours and ignore label for the config's model.

    Taken from the first of `names` (default: DATASETS.TEST, then DATASETS.TRAIN) that is known
    here and has MODEL.SEM_SEG_HEAD.NUM_CLASSES classes; generic names ``class_0 ...`` when
    none is.

    Returns:
        ``(metadata, the dataset it came from or None)``.
    """
    num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    names = list(names) if names else [*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN]
    for name in names:
        try:
            meta = resolve_metadata(name)
        except Exception as error:  # not registered on this machine: only loses class names
            logger.debug("no metadata for %s: %s", name, error)
            continue
        if meta.num_classes == num_classes:
            return meta, name
    logger.warning(
        "No dataset with %d classes among %s is known here: using generic class names.",
        num_classes,
        names,
    )
    return resolve_metadata(None, num_classes=num_classes), None
