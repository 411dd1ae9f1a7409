"""Dataset metadata for the top-level commands: a dataset name (or metadata) -> `Metadata`.

The library has one metadata type, `atrous.data.Metadata`; evaluators take it (or an object with
its fields) as an argument and never look a name up. This module is for the builders at the
top (the bundle writer, ``atrous predict``) that start from a name in a config.
"""

from __future__ import annotations

from typing import Any

from atrous.data.metadata import Metadata, as_metadata

__all__ = ["EvalMetadata", "resolve_metadata"]

# The name evaluators used for their metadata type; the same type as `atrous.data.Metadata`.
EvalMetadata = Metadata


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
