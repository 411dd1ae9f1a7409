"""What an evaluator needs to know about a dataset: class names, colours and the ignore label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["EvalMetadata", "resolve_metadata"]


@dataclass(frozen=True)
class EvalMetadata:
    """Class names (index = training id), their RGB colours and the ignored label value."""

    name: str
    stuff_classes: tuple[str, ...]
    stuff_colors: tuple[tuple[int, int, int], ...]
    ignore_label: int = 255

    @property
    def num_classes(self) -> int:
        return len(self.stuff_classes)


def resolve_metadata(
    metadata: Any,
    *,
    num_classes: int | None = None,
    ignore_label: int | None = None,
) -> EvalMetadata:
    """Turn a dataset name or a metadata object into an `EvalMetadata`.

    Args:
        metadata: a dataset name (looked up with `atrous.data.get_metadata`), an object with
            ``stuff_classes`` (and optionally ``stuff_colors``, ``ignore_label``, ``name``), or
            None together with `num_classes` for anonymous classes ``class_0 ...``.
        num_classes: must equal ``len(stuff_classes)`` when both are known.
        ignore_label: overrides the metadata's ignore label.

    Raises:
        ValueError: the class count disagrees with `num_classes`, or nothing defines the classes.
    """
    if isinstance(metadata, str):
        from atrous.data import get_metadata

        metadata = get_metadata(metadata)
    if metadata is None:
        if num_classes is None:
            raise ValueError("give a dataset name, a metadata object or num_classes")
        classes: tuple[str, ...] = tuple(f"class_{i}" for i in range(num_classes))
        name, colors, ignore = "unnamed", None, 255
    else:
        classes = tuple(getattr(metadata, "stuff_classes", None) or ())
        if not classes:
            if num_classes is None:
                raise ValueError(f"metadata {metadata!r} has no stuff_classes")
            classes = tuple(f"class_{i}" for i in range(num_classes))
        name = str(getattr(metadata, "name", "unnamed"))
        colors = getattr(metadata, "stuff_colors", None)
        ignore = getattr(metadata, "ignore_label", 255)
    if num_classes is not None and num_classes != len(classes):
        raise ValueError(
            f"dataset '{name}' has {len(classes)} classes but num_classes={num_classes}; "
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES must match the dataset"
        )
    if colors is None or len(colors) < len(classes):
        from atrous.data.catalog import default_colors

        colors = default_colors(len(classes))
    return EvalMetadata(
        name=name,
        stuff_classes=classes,
        stuff_colors=tuple(tuple(int(v) for v in c) for c in colors[: len(classes)]),
        ignore_label=int(ignore_label if ignore_label is not None else ignore),
    )
