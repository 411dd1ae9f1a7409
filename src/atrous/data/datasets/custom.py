"""A user's own dataset described by a small YAML file, and folder/list pairing helpers.

Example ``data/cracks.yaml``::

    classes: [background, crack, rust]      # required: index = training label
    ignore_value: 255                       # required: mask value of unlabelled pixels
    colors: [[0, 0, 0], [255, 0, 0], [0, 200, 0]]   # optional, RGB per class
    label_map: {0: 0, 128: 1, 200: 2}       # optional: mask value -> class index (or the
                                            #   ignore value); unlisted values are kept
    image_ext: .jpg                         # optional (default: .jpg .jpeg .png .bmp .tif .tiff)
    mask_ext: .png                          # optional (default: .png)
    root: .                                 # optional: paths are relative to it (default: the
                                            #   YAML file's folder)
    splits:                                 # required: at least one split
      train: {images: images/train, masks: masks/train}   # mask = same relative path+mask_ext
      val: {list: val.txt}                  # lines "image_path mask_path"

Colour-coded masks (one RGB colour per class, as many annotation tools export them) are read
with ``mask_format: rgb``; ``colors`` is then required and is also the decoding table::

    classes: [background, crack, rust]
    mask_format: rgb                        # default "ids": the stored values are the classes
    colors: [[0, 0, 0], [255, 0, 0], [0, 200, 0]]   # pixel colour -> class index
    ignore_colors: [[255, 255, 255]]        # optional: colours of unlabelled pixels
    unknown_colors: error                   # default; "ignore": unlisted colours = unlabelled
    splits: ...

RGB, RGBA (alpha dropped) and palette PNGs (the palette's colours count, not its indices) are
decoded; any other colour is an error naming the file, the colour and its pixel count, unless
``unknown_colors: ignore``. ``ignore_value`` and ``label_map`` describe stored values and are
refused with ``mask_format: rgb``. Palette PNGs whose index is the class (Pascal VOC) need no
``mask_format``: the default reads their indices.

A list file holds one "image_path mask_path" pair per line, relative to ``root``; blank lines and
lines starting with "#" are skipped. A path with spaces is written in quotes
(``"my photos/a 1.jpg" "my masks/a 1.png"``) or the two paths are separated by a tab.

An unknown field (``colours``, ``label_mpa``) is an error naming the closest valid one: a typo in
an optional field would otherwise be ignored silently.

Use it as ``DATASETS.TRAIN ("data/cracks.yaml:train",)`` and
``DATASETS.TEST ("data/cracks.yaml:val",)``; a file with a single split can omit ``:split``.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import DatasetError
from ..image_io import ColorCoding
from ..metadata import DatasetEntry, Metadata, check_colors, default_colors

__all__ = ["load_dataset_yaml", "pair_folders", "pair_list", "yaml_dataset_entry"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Every field a dataset YAML may have; anything else is a typo.
_FIELDS = (
    "classes", "ignore_value", "colors", "label_map", "image_ext", "mask_ext", "root", "splits",
    "mask_format", "ignore_colors", "unknown_colors",
)  # fmt: skip
MASK_FORMATS = ("ids", "rgb")
_SPLIT_FIELDS = ("images", "masks", "list")


def pair_folders(
    image_dir: str | os.PathLike,
    mask_dir: str | os.PathLike,
    *,
    image_exts: Iterable[str] = IMAGE_EXTS,
    mask_ext: str = ".png",
    what: str = "dataset",
) -> list[dict]:
    """Pair every image under `image_dir` (recursively) with the mask at the same relative
    path under `mask_dir`, with extension `mask_ext`.

    Raises:
        DatasetError: a folder is missing, there are no images, or an image has no mask.
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    exts = tuple(e.lower() for e in image_exts)
    if not image_dir.is_dir():
        raise DatasetError(f"{what}: image folder {image_dir} does not exist")
    if not mask_dir.is_dir():
        raise DatasetError(f"{what}: mask folder {mask_dir} does not exist")
    images = sorted(
        os.path.join(dirpath, f)
        for dirpath, _, files in os.walk(image_dir)
        for f in files
        if f.lower().endswith(exts)
    )
    if not images:
        raise DatasetError(
            f"{what}: no images ({' '.join(exts)}) in {image_dir}; the split is empty"
        )
    records, missing = [], []
    for image in images:
        rel = os.path.relpath(image, image_dir)
        mask = os.path.join(mask_dir, os.path.splitext(rel)[0] + mask_ext)
        if not os.path.isfile(mask):
            missing.append((image, mask))
            continue
        records.append(
            {
                "file_name": image,
                "sem_seg_file_name": mask,
                "image_id": os.path.splitext(rel)[0],
            }
        )
    if missing:
        image, mask = missing[0]
        raise DatasetError(
            f"{what}: {len(missing)} of {len(images)} images have no mask (first: {image} "
            f"expects {mask}). Add the masks or remove those images."
        )
    return records


def _split_list_line(line: str) -> list[list[str]]:
    """The ways a list-file line can name two paths, preferred first.

    A tab separates two paths that may hold spaces; quotes ("..." or '...', no escapes, so
    Windows backslashes stay as written) group a path with spaces; otherwise whitespace
    separates the two, as in the original format. Only readings with exactly two paths count.
    """
    readings = []
    if "\t" in line:
        readings.append([p.strip() for p in line.split("\t") if p.strip()])
    if '"' in line or "'" in line:
        lexer = shlex.shlex(line, posix=True)
        lexer.whitespace_split = True
        lexer.escape = ""
        lexer.commenters = ""
        with contextlib.suppress(ValueError):  # an unmatched quote: an apostrophe in a name
            readings.append(list(lexer))
    readings.append(line.split())
    unique = []
    for parts in readings:
        if len(parts) == 2 and parts not in unique:
            unique.append(parts)
    return unique


def pair_list(
    list_file: str | os.PathLike, *, root: str | os.PathLike, what: str = "dataset"
) -> list[dict]:
    """Records from a text file of "image_path mask_path" lines (relative to `root`).

    Blank lines and lines starting with "#" are skipped. Paths with spaces are quoted
    (``"a 1.jpg" "a 1.png"``) or separated by a tab; when a line reads two ways (a quote
    character inside an unquoted name), the reading whose files exist wins.

    Raises:
        DatasetError: missing list file, malformed line, empty list, missing files.
    """
    list_file, root = Path(list_file), Path(root)
    if not list_file.is_file():
        raise DatasetError(f"{what}: list file {list_file} does not exist")
    records = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        readings = _split_list_line(line)
        if not readings:
            raise DatasetError(
                f"{list_file}:{lineno}: expected 'image_path mask_path', got {line!r}; quote a "
                'path that contains spaces ("my images/a 1.jpg") or separate the two with a tab'
            )
        parts = next((p for p in readings if all(os.path.isfile(root / x) for x in p)), readings[0])
        image, mask = (str(root / p) for p in parts)
        for kind, path in (("image", image), ("mask", mask)):
            if not os.path.isfile(path):
                raise DatasetError(f"{list_file}:{lineno}: {kind} {path} does not exist")
        records.append(
            {
                "file_name": image,
                "sem_seg_file_name": mask,
                "image_id": os.path.splitext(parts[0])[0],
            }
        )
    if not records:
        raise DatasetError(f"{what}: list file {list_file} names no images")
    return records


def _check_fields(given: Iterable[Any], valid: tuple[str, ...], path: Path, where: str) -> None:
    for key in given:
        if key in valid:
            continue
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise DatasetError(
            f"{path}: unknown field '{key}'{where}.{hint} Valid fields: {', '.join(valid)}."
        )


def _require(cfg: dict, key: str, path: Path, hint: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise DatasetError(f"{path}: missing required field '{key}' ({hint})")
    return cfg[key]


def build_lut(label_map: dict[int, int] | None, ignore_value: int, path: Path) -> np.ndarray:
    """Lookup table (uint16, 65536 entries) from stored mask values to training labels.

    The ignore value (and label_map targets equal to it) become 255, the internal ignore label.
    """
    lut = np.arange(65536, dtype=np.int64)
    lut[ignore_value] = 255
    for raw, target in (label_map or {}).items():
        raw, target = int(raw), int(target)
        if not 0 <= raw < 65536:
            raise DatasetError(f"{path}: label_map key {raw} is outside 0..65535")
        lut[raw] = 255 if target == ignore_value else target
    # Values left unmapped keep their value; the mapper rejects those that are not classes.
    return lut.astype(np.uint16)


def _check_splits(splits: dict, path: Path) -> None:
    """Check that every split names its folders ('images', 'masks') or a 'list' file.

    Raises:
        DatasetError: a split with unknown fields, or with neither form, naming the split.
    """
    for name, split in splits.items():
        if isinstance(split, dict):
            _check_fields(split, _SPLIT_FIELDS, path, f" in split '{name}'")
        if not isinstance(split, dict) or not (
            "list" in split or ("images" in split and "masks" in split)
        ):
            raise DatasetError(
                f"{path}: split '{name}' needs fields 'images' and 'masks' (folders) or 'list' "
                "(a file of 'image_path mask_path' lines)"
            )


def _parse_colors(colors: Any, num_classes: int, path: Path) -> tuple[tuple[int, int, int], ...]:
    """The 'colors' field checked with `check_colors`, or the default palette when absent.

    Raises:
        DatasetError: invalid colors, or not one per class.
    """
    if colors is None:
        return default_colors(num_classes)
    try:
        colors = check_colors(colors)
    except (DatasetError, TypeError) as e:
        raise DatasetError(f"{path}: field 'colors': {e}") from e
    if len(colors) != num_classes:
        raise DatasetError(
            f"{path}: field 'colors' has {len(colors)} entries for {num_classes} classes"
        )
    return colors


def _parse_color_coding(cfg: dict, num_classes: int, path: Path) -> ColorCoding:
    """The `ColorCoding` of a ``mask_format: rgb`` dataset file.

    Raises:
        DatasetError: 'colors' missing or not one distinct colour per class, a field that only
            applies to stored values, or a bad 'ignore_colors' / 'unknown_colors'.
    """
    for key, instead in (
        ("ignore_value", "list the colours of unlabelled pixels in 'ignore_colors'"),
        ("label_map", "give each class its colour in 'colors'"),
    ):
        if key in cfg:
            raise DatasetError(
                f"{path}: field '{key}' describes stored mask values, but 'mask_format: rgb' "
                f"masks hold colours: remove it and {instead}"
            )
    if cfg.get("colors") is None:
        raise DatasetError(
            f"{path}: 'mask_format: rgb' needs field 'colors': the RGB colour of each class in "
            "the masks, e.g. [[0, 0, 0], [255, 0, 0]]"
        )
    colors = _parse_colors(cfg["colors"], num_classes, path)
    ignore = cfg.get("ignore_colors") or []
    try:
        ignore = check_colors(ignore) if ignore else ()
    except (DatasetError, TypeError) as e:
        raise DatasetError(f"{path}: field 'ignore_colors': {e}") from e
    unknown = cfg.get("unknown_colors", "error")
    if unknown not in ("error", "ignore"):
        raise DatasetError(
            f"{path}: field 'unknown_colors' is {unknown!r}; use 'error' (the default: an "
            "unlisted colour stops with its file name) or 'ignore' (unlisted = unlabelled)"
        )
    try:
        return ColorCoding(colors=colors, ignore_colors=ignore, unknown_colors=unknown)
    except DatasetError as e:
        raise DatasetError(f"{path}: {e}") from e


def _check_label_map(label_map: Any, num_classes: int, ignore_value: int, path: Path) -> None:
    """Check that 'label_map' (if given) maps int mask values to a class index or the ignore value.

    Raises:
        DatasetError: not a mapping, a non-int entry, or a target out of range.
    """
    if label_map is not None and not isinstance(label_map, dict):
        raise DatasetError(f"{path}: field 'label_map' must map mask values to class indices")
    for raw, target in (label_map or {}).items():
        if not isinstance(raw, int) or not isinstance(target, int):
            raise DatasetError(f"{path}: field 'label_map' entry {raw}: {target} is not int: int")
        if not (0 <= target < num_classes or target == ignore_value):
            raise DatasetError(
                f"{path}: field 'label_map' maps {raw} to {target}, which is neither a class "
                f"index (0..{num_classes - 1}) nor the ignore value {ignore_value}"
            )


def load_dataset_yaml(path: str | os.PathLike) -> dict:
    """Parse and validate a dataset YAML file.

    Returns:
        dict with "classes", "colors", "ignore_value", "lut" (or None), "color_coding" (a
        `ColorCoding` with ``mask_format: rgb``, else None), "splits" (name -> split dict),
        "root", "image_exts", "mask_ext".

    Raises:
        DatasetError: unreadable file or a missing/invalid field, naming the field.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist")
    from atrous.utils.safe_yaml import MAX_YAML_BYTES, YAMLBudgetError, load_yaml

    try:
        with open(path, encoding="utf-8") as f:
            cfg = load_yaml(f.read(MAX_YAML_BYTES + 1))
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a text file (not UTF-8); give a YAML file") from None
    except YAMLBudgetError as e:
        raise DatasetError(f"{path} was refused: {e}") from None
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: not valid YAML ({str(e)[:300]})") from None
    if not isinstance(cfg, dict):
        raise DatasetError(f"{path}: expected a mapping with 'classes', 'ignore_value', 'splits'")
    _check_fields(cfg, _FIELDS, path, "")
    classes = _require(cfg, "classes", path, "a list of class names, index = training label")
    if not isinstance(classes, list) or not classes:
        raise DatasetError(f"{path}: field 'classes' must be a non-empty list of names")
    from atrous.utils.visualize import MAX_CLASS_NAME_LENGTH

    for i, name in enumerate(classes):
        if len(str(name)) > MAX_CLASS_NAME_LENGTH:
            raise DatasetError(
                f"{path}: class {i} has a name of {len(str(name)):,} characters; names may "
                f"have at most {MAX_CLASS_NAME_LENGTH}"
            )
    if len(classes) > 255:
        raise DatasetError(f"{path}: at most 255 classes are supported, got {len(classes)}")
    mask_format = cfg.get("mask_format", "ids")
    if mask_format not in MASK_FORMATS:
        raise DatasetError(
            f"{path}: field 'mask_format' is {mask_format!r}; use 'ids' (the stored values are "
            "class indices) or 'rgb' (one colour per class, listed in 'colors')"
        )
    splits = _require(cfg, "splits", path, "e.g. {train: {images: ..., masks: ...}}")
    if not isinstance(splits, dict) or not splits:
        raise DatasetError(f"{path}: field 'splits' must map split names to folders or lists")
    _check_splits(splits, path)
    if mask_format == "rgb":
        color_coding = _parse_color_coding(cfg, len(classes), path)
        colors, ignore_value, lut = color_coding.colors, 255, None
    else:
        for key in ("ignore_colors", "unknown_colors"):
            if key in cfg:
                raise DatasetError(
                    f"{path}: field '{key}' describes colour-coded masks; add 'mask_format: rgb'"
                )
        color_coding = None
        ignore_value = _require(cfg, "ignore_value", path, "the mask value of unlabelled pixels")
        if not isinstance(ignore_value, int) or not 0 <= ignore_value < 65536:
            raise DatasetError(f"{path}: field 'ignore_value' must be an integer in 0..65535")
        colors = _parse_colors(cfg.get("colors"), len(classes), path)
        label_map = cfg.get("label_map")
        _check_label_map(label_map, len(classes), ignore_value, path)
        needs_lut = ignore_value != 255 or bool(label_map)
        lut = build_lut(label_map, ignore_value, path) if needs_lut else None
    image_exts = cfg.get("image_ext", IMAGE_EXTS)
    if isinstance(image_exts, str):
        image_exts = (image_exts,)
    root = Path(cfg.get("root") or ".")
    if not root.is_absolute():
        root = path.parent / root
    return {
        "classes": tuple(str(c) for c in classes),
        "colors": colors,
        "ignore_value": ignore_value,
        "lut": lut,
        "color_coding": color_coding,
        "splits": splits,
        "root": root,
        "image_exts": tuple(image_exts),
        "mask_ext": str(cfg.get("mask_ext", ".png")),
    }


def _split_name(name: str) -> tuple[str, str | None]:
    if os.path.isfile(name) or ":" not in name:
        return name, None
    path, split = name.rsplit(":", 1)
    return path, split


def yaml_dataset_entry(name: str) -> DatasetEntry:
    """Catalog entry for "path/to/data.yaml" or "path/to/data.yaml:split"."""
    path_str, split = _split_name(name)
    path = Path(path_str)

    def resolve() -> tuple[dict, str]:
        spec = load_dataset_yaml(path)
        chosen = split
        if chosen is None:
            if len(spec["splits"]) != 1:
                raise DatasetError(
                    f"{path} defines splits {sorted(spec['splits'])}; name one, e.g. "
                    f"'{path}:{sorted(spec['splits'])[0]}'"
                )
            chosen = next(iter(spec["splits"]))
        if chosen not in spec["splits"]:
            raise DatasetError(
                f"{path} has no split '{chosen}' (it defines {sorted(spec['splits'])})"
            )
        return spec, chosen

    def records() -> list[dict]:
        spec, chosen = resolve()
        s = spec["splits"][chosen]
        what = f"{path} split '{chosen}'"
        if "list" in s:
            recs = pair_list(spec["root"] / s["list"], root=spec["root"], what=what)
        else:
            recs = pair_folders(
                spec["root"] / s["images"],
                spec["root"] / s["masks"],
                image_exts=spec["image_exts"],
                mask_ext=spec["mask_ext"],
                what=what,
            )
        if spec["lut"] is not None:
            for r in recs:
                r["sem_seg_lut"] = spec["lut"]
        if spec["color_coding"] is not None:
            for r in recs:
                r["sem_seg_color_coding"] = spec["color_coding"]
        return recs

    def metadata() -> Metadata:
        spec, chosen = resolve()
        s = spec["splits"][chosen]
        return Metadata(
            name=name,
            stuff_classes=spec["classes"],
            stuff_colors=spec["colors"],
            ignore_label=255,
            evaluator_type="sem_seg",
            image_root=str(spec["root"] / s["images"]) if "images" in s else None,
            gt_root=str(spec["root"] / s["masks"]) if "masks" in s else None,
        )

    return DatasetEntry(records=records, metadata=metadata)
