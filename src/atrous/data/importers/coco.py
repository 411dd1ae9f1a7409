"""COCO instance annotations (``instances_*.json``) -> class-id masks, rasterised by pycocotools.

What CVAT, Label Studio, Roboflow and the COCO API write: ``images`` (id, file_name, width,
height), ``categories`` (id, name) and ``annotations`` whose ``segmentation`` is a list of
polygons ``[x0, y0, x1, y1, ...]``, an uncompressed RLE ``{"counts": [int, ...], "size": [h,
w]}`` or a compressed one (``counts`` a string). Each is turned into a mask by
``pycocotools.mask`` exactly as ``COCO.annToMask`` does.

The rules:

- classes are the categories in id order (ids need not be contiguous): class 0 is the
  category with the smallest id;
- every annotation of an image is painted in file order, a later one on top of an earlier
  one where they overlap (the order in which ``annToMask`` results are usually combined);
- ``iscrowd: 1`` regions paint the ignore value, in the same order;
- pixels no annotation covers get the ignore value, or class 0 ``background`` (prepended to
  the categories unless one has that name) with ``background=``;
- an annotation with only a ``bbox`` (how CVAT's COCO export writes boxes) is painted as its
  rectangle, as CVAT's own mask export does.

Errors name the JSON file, the annotation id and the image: a polygon with fewer than 3
points, a coordinate outside the image, an unknown category or image id, an RLE whose size is
not the image's (or whose runs do not add up to it), a missing image file, or an image whose
size is not the one the JSON states.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..image_io import image_size
from .common import (
    IGNORE_VALUE,
    AnnotationError,
    Export,
    Sample,
    check_size,
    find_image,
    split_name,
)

__all__ = ["coco_split_name", "read_coco", "rle_string_total"]


def _mask_utils():
    try:
        from pycocotools import mask
    except ImportError:
        raise AnnotationError("COCO import needs pycocotools: pip install 'atrous[coco]'") from None
    return mask


def rle_string_total(counts: str) -> int:
    """Sum of the run lengths in a compressed COCO RLE string (what they must add up to: H*W).

    pycocotools decodes such a string without checking its total and writes past its buffer when
    the runs add up to more than the mask has pixels, so the total is checked first. The format
    (pycocotools' rleFrString): each run is a little-endian base-32 number in characters
    ``48 + 5-bit group`` (bit 0x20: more groups follow, bit 0x10 of the last: negative), and from
    the third run on, a run is stored as the difference to the run two before it.
    """
    runs: list[int] = []
    value = shift = 0
    for ch in counts:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            raise ValueError(f"character {ch!r} cannot occur in an RLE string")
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
        value = shift = 0
    if shift:
        raise ValueError("the RLE string ends in the middle of a run")
    if any(r < 0 for r in runs):
        raise ValueError("the RLE string holds a negative run")
    return sum(runs)


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a COCO object with 'images' and 'annotations'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(
                f"{path}: no '{key}' list; is this a COCO instances file (instances_*.json)?"
            )
    return data


def _polygon_rle(seg: list, h: int, w: int, where: str):
    for k, poly in enumerate(seg):
        if not isinstance(poly, list) or len(poly) % 2 or len(poly) < 6:
            n = len(poly) / 2 if isinstance(poly, list) else 0
            raise AnnotationError(
                f"{where}: polygon {k} has {n:g} points; a polygon needs at least 3 (x, y) pairs"
            )
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        bad = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
        if bad.any():
            x, y = xy[np.argmax(bad)]
            raise AnnotationError(
                f"{where}: polygon {k} has point ({x:g}, {y:g}) outside the {w}x{h} image"
            )
    mask = _mask_utils()
    return mask.merge(mask.frPyObjects(seg, h, w))


def _rle(seg: dict, h: int, w: int, where: str):
    size = seg.get("size")
    counts = seg.get("counts")
    if not isinstance(size, list) or len(size) != 2 or counts is None:
        raise AnnotationError(f"{where}: an RLE needs 'size' [height, width] and 'counts'")
    if [int(v) for v in size] != [h, w]:
        raise AnnotationError(
            f"{where}: RLE size {size[1]}x{size[0]} (width x height) is not the image's {w}x{h}"
        )
    mask = _mask_utils()
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts):
            raise AnnotationError(f"{where}: RLE counts must be whole numbers of 0 or more")
        total = sum(counts)
        rle = mask.frPyObjects(seg, h, w)
    else:
        try:
            total = rle_string_total(counts)
        except (TypeError, ValueError) as e:
            raise AnnotationError(f"{where}: RLE counts are not valid ({e})") from None
        rle = {"size": [h, w], "counts": counts.encode("ascii")}
    if total != h * w:
        raise AnnotationError(
            f"{where}: RLE runs add up to {total} pixels, the {w}x{h} image has {h * w}"
        )
    return rle


def is_box_only(ann: dict) -> bool:
    """An annotation with a ``bbox`` [x, y, w, h] and no segmentation (CVAT's boxes)."""
    seg, box = ann.get("segmentation"), ann.get("bbox")
    return not seg and isinstance(box, list) and len(box) == 4


def annotation_mask(ann: dict, h: int, w: int, where: str) -> np.ndarray:
    """``(h, w)`` uint8 0/1 mask of one COCO annotation (polygons or RLE), as annToMask makes it;
    an annotation with only a ``bbox`` is its rectangle, as CVAT's own mask export paints boxes.

    Raises:
        AnnotationError: no segmentation, a bad polygon or RLE; the message starts with `where`.
    """
    seg = ann.get("segmentation")
    if isinstance(seg, list) and seg:
        rle = _polygon_rle(seg, h, w, where)
    elif isinstance(seg, dict):
        rle = _rle(seg, h, w, where)
    elif is_box_only(ann):
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        rle = _polygon_rle([[x, y, x + bw, y, x + bw, y + bh, x, y + bh]], h, w, f"{where}: bbox")
    else:
        raise AnnotationError(
            f"{where}: neither 'segmentation' polygons or RLE nor a 'bbox'; export the "
            "annotations with polygons or masks"
        )
    with warnings.catch_warnings():
        # pycocotools 2.0.x under NumPy 2 warns about its own __array__ on every decode
        warnings.simplefilter("ignore", DeprecationWarning)
        return _mask_utils().decode(rle)


def coco_split_name(path: Path) -> str | None:
    """The split a COCO file is for: ``instances_val2017.json`` -> ``val2017``, Roboflow's
    ``train/_annotations.coco.json`` -> ``train``; None when its name does not say."""
    if path.name == "_annotations.coco.json":
        return split_name(path.parent.name)
    return split_name(path.name.removesuffix(".json"))


def image_folders(json_path: Path, images: Path | None) -> list[Path]:
    """Where a COCO file's images may be: --images, beside the JSON, ``images/`` there, and the
    same one level up, each also with the file's subset name (``instances_val2017.json``:
    ``val2017/``, CVAT's ``instances_default.json``: ``images/default/``)."""
    subset = json_path.name.removesuffix(".json").removeprefix("instances_")
    folders = [images] if images is not None else []
    for base in (json_path.parent, json_path.parent.parent):
        folders += [base, base / "images"]
        if subset:
            folders += [base / subset, base / "images" / subset]
    return folders


def read_coco(
    json_files: list[Path],
    *,
    images: Path | None = None,
    background: str | None = None,
) -> Export:
    """Read one or more COCO instance files; several files become splits named after them.

    Args:
        json_files: ``instances_<split>.json`` files (one file: its split name if its name has
            one, else "train").
        images: folder holding the images, if not beside the JSON files.
        background: name of the class of the pixels no annotation covers, added as class 0
            (or, when a category has that name, that category); default: they are ignored.

    Raises:
        AnnotationError: unreadable file, categories that differ between files, duplicate
            split names, an unknown category or image id, a missing image.
    """
    datasets = [(p, _load(p)) for p in json_files]
    names = [coco_split_name(p) for p, _ in datasets]
    if len(datasets) == 1:
        names = [names[0] or "train"]
    for (p, _), n in zip(datasets, names):
        if n is None:
            raise AnnotationError(
                f"{p}: cannot tell which split this file is; name the files "
                "instances_train.json, instances_val.json, ..."
            )
    if len(set(names)) != len(names):
        raise AnnotationError(
            f"{', '.join(str(p) for p, _ in datasets)} give the splits {names}; each needs its own"
        )
    categories: dict[int, str] = {}
    for p, data in datasets:
        for cat in data["categories"]:
            cid, name = cat.get("id"), str(cat.get("name"))
            if categories.setdefault(cid, name) != name:
                raise AnnotationError(
                    f"{p}: category id {cid} is '{name}' but '{categories[cid]}' in another file"
                )
    if not categories:
        raise AnnotationError(f"{json_files[0]}: no categories")
    classes = [categories[k] for k in sorted(categories)]
    unlabelled = IGNORE_VALUE
    if background is not None:
        if background not in classes:
            classes.insert(0, background)
        unlabelled = classes.index(background)
    class_of = {cid: classes.index(name) for cid, name in categories.items()}

    samples = []
    for (path, data), split in zip(datasets, names):
        by_image: dict[object, list[dict]] = {img.get("id"): [] for img in data["images"]}
        for ann in data["annotations"]:
            where = f"{path}: annotation {ann.get('id')}"
            if ann.get("image_id") not in by_image:
                raise AnnotationError(f"{where}: image id {ann.get('image_id')} is not in 'images'")
            if not ann.get("iscrowd") and ann.get("category_id") not in class_of:
                raise AnnotationError(
                    f"{where}: category id {ann.get('category_id')} is not in 'categories' "
                    f"(ids {sorted(categories)})"
                )
            by_image[ann["image_id"]].append(ann)
        folders = image_folders(path, images)
        for img in data["images"]:
            where = f"{path}: image id {img.get('id')}"
            file_name = str(img.get("file_name", ""))
            image_path = find_image(file_name, folders, where=where)
            if img.get("height") and img.get("width"):
                hw = (int(img["height"]), int(img["width"]))
                check_size(where, image_path, hw)
            else:  # optional in some writers: the file says
                hw = image_size(image_path)
            samples.append(
                Sample(
                    split=split,
                    name=image_path.name,
                    image=image_path,
                    mask=_painter(path, img, by_image[img.get("id")], hw, class_of, unlabelled),
                    source=f"{path} ({file_name})",
                )
            )
    boxes = sum(is_box_only(a) for _, d in datasets for a in d["annotations"])
    notes = [f"{boxes} annotations without segmentation painted as their bbox"] if boxes else []
    return Export(classes=classes, samples=samples, has_splits=len(datasets) > 1, notes=notes)


def _painter(
    path: Path,
    img: dict,
    anns: list[dict],
    hw: tuple[int, int],
    class_of: dict,
    unlabelled: int,
) -> Callable[[], np.ndarray]:
    def paint() -> np.ndarray:
        h, w = hw
        out = np.full((h, w), unlabelled, dtype=np.uint8)
        for ann in anns:
            where = f"{path}: annotation {ann.get('id')} (image '{img.get('file_name')}')"
            value = IGNORE_VALUE if ann.get("iscrowd") else class_of[ann["category_id"]]
            out[annotation_mask(ann, h, w, where).astype(bool)] = value
        return out

    return paint
