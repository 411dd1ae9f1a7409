"""Dataset names -> records and metadata.

A dataset is a list of dicts (one per image) with at least ``file_name`` and
``sem_seg_file_name``, plus ``height``/``width`` and optional ``sem_seg_lut`` (a uint8 lookup
table from the values stored in the label files to training labels, for datasets whose files
are not stored in training labels, e.g. ADE20K). Its `Metadata` carries the class names, colours,
ignore label and evaluator type.

Names resolve, in order, to: datasets registered with `register_dataset`, builtin datasets
(Cityscapes, ADE20K, Pascal VOC, synthetic) under the dataset root, and dataset YAML files
(``path/to/data.yaml`` or ``path/to/data.yaml:split``, see `atrous.data.datasets.custom`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from .errors import DatasetError
from .image_io import ColorCoding
from .metadata import DatasetEntry, Metadata, check_colors, dataset_root, default_colors

__all__ = [
    "DatasetError",
    "Metadata",
    "check_datasets",
    "dataset_root",
    "default_colors",
    "get_dataset_records",
    "get_metadata",
    "list_datasets",
    "register_dataset",
]


_REGISTERED: dict[str, DatasetEntry] = {}
_BUILTIN: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str,
    records: Callable[[], list[dict]] | Sequence[dict],
    *,
    stuff_classes: Sequence[str],
    stuff_colors: Sequence[Sequence[int]] | None = None,
    ignore_label: int = 255,
    evaluator_type: str = "sem_seg",
    image_root: str | None = None,
    gt_root: str | None = None,
    overwrite: bool = False,
    color_coding: ColorCoding | None = None,
    **extra: Any,
) -> None:
    """Make a dataset available by name (in `DATASETS.TRAIN` / `DATASETS.TEST`).

    Args:
        name: dataset name.
        records: a list of dicts, or a function returning one (called on first use). Each dict
            needs "file_name" (image path) and "sem_seg_file_name" (label PNG of training labels
            0..C-1 and `ignore_label`); "height"/"width" are filled in from the image headers
            when missing. An optional "sem_seg_lut" (uint8 array of 256 or 65536 entries) maps
            stored label values to training labels.
        stuff_classes: class names, index = training label.
        stuff_colors: RGB colour per class (default: a fixed palette).
        ignore_label: training label of unlabelled pixels.
        evaluator_type: "sem_seg" or "cityscapes_sem_seg".
        image_root: folder of the images, for tools that want it.
        gt_root: folder of the label files, for tools that want it.
        overwrite: replace an existing registration instead of failing.
        color_coding: for colour-coded masks, how their colours map to classes (its class
            colours, the colours of unlabelled pixels and what an unlisted colour means); its
            colours are the class colours unless `stuff_colors` repeats them. None (default):
            the label files hold class indices (palette PNGs their indices). See
            `atrous.data.datasets.custom` for the YAML form.
        **extra: further metadata attributes.

    Raises:
        DatasetError: the name is taken (without `overwrite`) or the metadata is inconsistent.
    """
    if not overwrite and (name in _REGISTERED or name in _BUILTIN):
        raise DatasetError(
            f"dataset {name!r} is already registered; pick another name or pass overwrite=True"
        )
    classes = tuple(str(c) for c in stuff_classes)
    if not classes:
        raise DatasetError(f"dataset {name!r}: stuff_classes is empty")
    coding = color_coding
    if stuff_colors is not None:
        colors = check_colors(stuff_colors)
    else:
        colors = default_colors(len(classes)) if coding is None else coding.colors
    if len(colors) != len(classes):
        raise DatasetError(
            f"dataset {name!r}: {len(colors)} colours for {len(classes)} classes; give one "
            "colour per class"
        )
    if coding is not None:
        if coding.colors != colors:
            raise DatasetError(
                f"dataset {name!r}: stuff_colors differ from the colours of color_coding; the "
                "masks paint each class in its colour, so give them once (in color_coding)"
            )
        if int(ignore_label) != 255:
            raise DatasetError(
                f"dataset {name!r}: with a color_coding unlabelled pixels are given by its "
                "ignore_colors and become 255; leave ignore_label at 255"
            )
    meta = Metadata(
        name=name,
        stuff_classes=classes,
        stuff_colors=colors,
        ignore_label=int(ignore_label),
        evaluator_type=evaluator_type,
        image_root=image_root,
        gt_root=gt_root,
        extra=dict(extra),
    )
    if callable(records):
        make = records
    else:
        fixed = list(records)

        def make() -> list[dict]:
            return fixed

    def fn() -> list[dict]:
        if coding is None:
            return make()
        return [{**r, "sem_seg_color_coding": coding} for r in make()]

    _REGISTERED[name] = DatasetEntry(records=fn, metadata=lambda: meta)


def _register_builtin(
    name: str, records: Callable[[], list[dict]], metadata: Callable[[], Metadata]
) -> None:
    _BUILTIN[name] = DatasetEntry(records=records, metadata=metadata)


def _is_yaml_name(name: str) -> bool:
    # Only a file may carry the whole name: a folder that happens to be called "d.yaml:val"
    # must not turn the dataset "d.yaml" split "val" into an unknown name.
    path = name.rsplit(":", 1)[0] if ":" in name and not os.path.isfile(name) else name
    return path.endswith((".yaml", ".yml"))


def _lookup(name: str) -> DatasetEntry:
    _ensure_builtins()
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        return _BUILTIN[name]
    if _is_yaml_name(name):
        from .datasets.custom import yaml_dataset_entry

        return yaml_dataset_entry(name)
    known = ", ".join(sorted(list(_BUILTIN) + list(_REGISTERED)))
    raise DatasetError(
        f"unknown dataset {name!r}. Known datasets: {known}. A dataset YAML file is given by its "
        "path ending in .yaml (optionally ':split'); your own Python datasets are added with "
        "atrous.data.register_dataset()."
    )


def get_metadata(name: str) -> Metadata:
    """Metadata of a dataset (works without the dataset's files on disk)."""
    return _lookup(name).metadata()


def get_dataset_records(name: str, *, read_sizes: bool = True) -> list[dict]:
    """Records of a dataset, checked up front: the image and label files exist and pair up.

    Args:
        name: dataset name.
        read_sizes: fill in missing "height"/"width" from the image headers (an unreadable
            header raises); False lists the records as the dataset gives them, for tools
            that read every file themselves and report what fails (check-dataset).

    Returns:
        list of dicts with "file_name", "sem_seg_file_name", "height", "width" (and whatever
        else the dataset provides).

    Raises:
        DatasetError: missing root, empty split, unpaired files, ... with what to do about it.
    """
    records = _lookup(name).records()
    if not records:
        raise DatasetError(f"dataset {name!r} has no images")
    return _complete(name, records) if read_sizes else list(records)


def _complete(name: str, records: list[dict]) -> list[dict]:
    from .image_io import image_size

    out = []
    for r in records:
        if "file_name" not in r:
            raise DatasetError(f"dataset {name!r}: a record has no 'file_name': {r}")
        if "height" not in r or "width" not in r:
            h, w = image_size(r["file_name"])
            r = {**r, "height": h, "width": w}
        out.append(r)
    return out


def check_datasets(
    names: Sequence[str], *, key: str, num_classes: int | None = None, records: bool = True
) -> None:
    """Resolve dataset names now, so that a bad one fails before a run, not after its training.

    Args:
        names: dataset names (e.g. ``cfg.DATASETS.TEST``).
        key: the config key or flag they came from, for the message.
        num_classes: when given, every dataset must have this many classes.
        records: also build the records (the files exist and pair up), not just the metadata.

    Raises:
        DatasetError: an unknown name or unusable files, naming `key` and the dataset.
        ConfigError: a dataset whose class count is not `num_classes` (the config must change).
    """
    from ..config import ConfigError

    for name in names:
        try:
            meta = get_metadata(name)
            if records:
                get_dataset_records(name)
        except DatasetError as error:
            raise DatasetError(f"{key}: {error}") from error
        if num_classes is not None and meta.num_classes != num_classes:
            raise ConfigError(
                f"{key}: MODEL.SEM_SEG_HEAD.NUM_CLASSES is {num_classes} but dataset {name!r} "
                f"has {meta.num_classes} classes: set MODEL.SEM_SEG_HEAD.NUM_CLASSES "
                f"{meta.num_classes}."
            )


def list_datasets() -> list[str]:
    """Names of the builtin and registered datasets."""
    _ensure_builtins()
    return sorted(set(_BUILTIN) | set(_REGISTERED))


_BUILTINS_LOADED = False


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from .datasets import ade20k, cityscapes, voc

    cityscapes.register_builtin(_register_builtin)
    ade20k.register_builtin(_register_builtin)
    voc.register_builtin(_register_builtin)
