"""LabelMe JSON files -> class-id masks, painted as labelme paints them.

A LabelMe file holds ``shapes`` (``label``, ``points`` [[x, y], ...], ``shape_type``), the image
as ``imageData`` (base64 of the file's bytes) or ``imagePath`` (relative to the JSON file), and
``imageHeight`` / ``imageWidth``. Each shape is drawn with Pillow's ImageDraw exactly as
``labelme.utils.shape_to_mask`` draws it (polygon, rectangle, circle, oriented rectangle; lines,
line strips and points with labelme's 10 px line width and 5 px point radius; ``mask`` shapes
placed in their box), and the shapes are painted in file order, a later one on top, as
``labelme.utils.shapes_to_label`` does for ``labelme_json_to_dataset`` and ``labelme2voc.py``.
labelme itself is not needed at run time: it pulls in Qt.

Classes follow labelme's conventions:

- ``classes=`` a list of names, or a ``labels.txt`` file with one name a line as
  labelme2voc.py reads it; a line ``__ignore__`` is no class: shapes with that label paint the
  ignore value. Any other label is an error naming the file and shape.
- without it, ``_background_`` then the labels seen, sorted (what ``labelme_json_to_dataset``
  numbers them by).
- pixels no shape covers are ``_background_`` when the class list has it (labelme's class 0),
  otherwise the ignore value.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from .common import IGNORE_VALUE, AnnotationError, Export, Sample, check_size, split_name

__all__ = ["BACKGROUND", "IGNORE", "read_classes", "read_labelme", "shape_mask"]

BACKGROUND = "_background_"
IGNORE = "__ignore__"
# labelme's shape_to_mask defaults.
LINE_WIDTH = 10
POINT_SIZE = 5
_TWO_POINTS = ("rectangle", "circle", "line")


def read_classes(spec: str) -> list[str]:
    """Class names from a ``labels.txt`` file (one a line) or a comma-separated list.

    Raises:
        AnnotationError: an empty list or a name given twice.
    """
    if os.path.isfile(spec):
        names = [line.strip() for line in Path(spec).read_text(encoding="utf-8").splitlines()]
    elif spec.endswith(".txt"):
        raise AnnotationError(f"--classes {spec}: no such file")
    else:
        names = [n.strip() for n in spec.split(",")]
    names = [n for n in names if n]
    if not [n for n in names if n != IGNORE]:
        raise AnnotationError(f"--classes {spec}: no class names")
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise AnnotationError(f"--classes {spec}: '{dup}' is given twice")
    return names


def _check_points(shape: dict, h: int, w: int, where: str) -> list[tuple[float, float]]:
    points = shape.get("points")
    kind = shape.get("shape_type") or "polygon"
    if not isinstance(points, list) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p)
        for p in points
    ):
        raise AnnotationError(f"{where}: 'points' must be a list of [x, y]")
    if kind == "polygon" and len(points) < 3:
        raise AnnotationError(
            f"{where}: polygon has {len(points)} points; a polygon needs at least 3"
        )
    needed = 2 if kind in (*_TWO_POINTS, "mask") else 4 if kind == "oriented_rectangle" else None
    if kind == "point":
        needed = 1
    if needed is not None and len(points) != needed:
        raise AnnotationError(f"{where}: a {kind} needs {needed} points, it has {len(points)}")
    for x, y in points:
        if not (0 <= x <= w and 0 <= y <= h):
            raise AnnotationError(
                f"{where}: {kind} point ({x:g}, {y:g}) is outside the {w}x{h} image"
            )
    return [(float(x), float(y)) for x, y in points]


def shape_mask(shape: dict, h: int, w: int, where: str) -> np.ndarray:
    """``(h, w)`` bool mask of one LabelMe shape, drawn as ``labelme.utils.shape_to_mask`` does.

    Raises:
        AnnotationError: too few points, a point outside the image, an unknown shape type or an
            unreadable ``mask``; the message starts with `where`.
    """
    kind = shape.get("shape_type") or "polygon"
    xy = _check_points(shape, h, w, where)
    if kind == "mask":
        return _mask_shape(shape, xy, h, w, where)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        (cx, cy), (px, py) = xy
        r = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
        draw.ellipse(((cx - r, cy - r), (cx + r, cy + r)), outline=1, fill=1)
    elif kind == "rectangle":
        (x0, y0), (x1, y1) = xy
        box = ((min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1)))
        draw.rectangle(box, outline=1, fill=1)
    elif kind in ("line", "linestrip"):
        draw.line(xy=xy, fill=1, width=LINE_WIDTH)
    elif kind == "point":
        cx, cy = xy[0]
        draw.ellipse(((cx - POINT_SIZE, cy - POINT_SIZE), (cx + POINT_SIZE, cy + POINT_SIZE)),
                     outline=1, fill=1)  # fmt: skip
    elif kind in ("polygon", "oriented_rectangle"):
        draw.polygon(xy=xy, outline=1, fill=1)
    else:
        raise AnnotationError(
            f"{where}: shape_type '{kind}' is not one labelme draws (polygon, rectangle, circle, "
            "line, linestrip, point, oriented_rectangle, mask)"
        )
    return np.asarray(canvas, dtype=bool)


def _mask_shape(
    shape: dict, xy: list[tuple[float, float]], h: int, w: int, where: str
) -> np.ndarray:
    try:
        data = base64.b64decode(shape.get("mask") or "", validate=True)
        small = np.asarray(Image.open(io.BytesIO(data))).astype(bool)
    except (binascii.Error, UnidentifiedImageError, OSError) as e:
        raise AnnotationError(f"{where}: 'mask' is not a base64 PNG ({e})") from None
    (x1, y1), (x2, y2) = (tuple(int(v) for v in p) for p in xy)
    if small.ndim != 2 or small.shape != (y2 - y1 + 1, x2 - x1 + 1):
        raise AnnotationError(
            f"{where}: 'mask' is {small.shape[1]}x{small.shape[0]} but its box is "
            f"{x2 - x1 + 1}x{y2 - y1 + 1}"
        )
    out = np.zeros((h, w), dtype=bool)
    out[y1 : y2 + 1, x1 : x2 + 1] = small
    return out


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise AnnotationError(f"{path}: no 'shapes' list; is this a LabelMe file?")
    for i, shape in enumerate(data["shapes"]):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise AnnotationError(f"{path}: shape {i} has no 'label'")
    return data


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    """(height, width) after the EXIF orientation, as labelme and `read_image` see the image."""
    w, h = ImageOps.exif_transpose(image).size
    return h, w


def _image_of(path: Path, data: dict, images: Path | None) -> tuple[Path | bytes, str, tuple]:
    """The image (file or embedded bytes), its extension and its (height, width)."""
    if data.get("imageData"):
        try:
            raw = base64.b64decode(data["imageData"], validate=True)
            with Image.open(io.BytesIO(raw)) as im:
                ext = {"JPEG": ".jpg"}.get(im.format, f".{str(im.format).lower()}")
                return raw, ext, _oriented_size(im)
        except (binascii.Error, UnidentifiedImageError, OSError) as e:
            raise AnnotationError(f"{path}: 'imageData' is not a base64 image ({e})") from None
    image_path = str(data.get("imagePath") or "").replace("\\", "/")
    # a path from another machine (C:\data\a.jpg): the file's name beside the JSON file
    candidates = [path.parent / image_path, path.parent / os.path.basename(image_path)]
    if images is not None:
        candidates += [images / image_path, images / os.path.basename(image_path)]
    found = next((c for c in candidates if image_path and c.is_file()), None)
    if found is None:
        raise AnnotationError(
            f"{path}: no imageData and image '{image_path}' not found (looked in "
            f"{', '.join(dict.fromkeys(str(c.parent) for c in candidates))}); give --images DIR"
        )
    with Image.open(found) as im:
        hw = _oriented_size(im)
    return found, found.suffix.lower(), hw


def read_labelme(
    folder: Path, *, classes: list[str] | None = None, images: Path | None = None
) -> Export:
    """Read every ``*.json`` under `folder` (recursively) as a LabelMe file.

    Top-level subfolders named for splits (``train/``, ``val/``, ...) holding all the files
    become the splits; otherwise there is one, "train".

    Raises:
        AnnotationError: no JSON files, an unreadable file, a label outside `classes`, a
            missing image, an image whose size is not imageHeight x imageWidth.
    """
    files = sorted(folder.rglob("*.json"))
    if not files:
        raise AnnotationError(f"{folder}: no LabelMe .json files")
    loaded = [(p, _load(p)) for p in files]
    rels = [p.relative_to(folder) for p in files]
    tops = {r.parts[0] if len(r.parts) > 1 else None for r in rels}
    by_split = all(t is not None and split_name(t) for t in tops)

    if classes is None:
        seen = {s["label"] for _, d in loaded for s in d["shapes"]} - {BACKGROUND, IGNORE}
        classes = [BACKGROUND, *sorted(seen)]
    names = [c for c in classes if c != IGNORE]
    value_of = {c: i for i, c in enumerate(names)}
    value_of[IGNORE] = IGNORE_VALUE
    unlabelled = value_of.get(BACKGROUND, IGNORE_VALUE)

    samples = []
    for (path, data), rel in zip(loaded, rels):
        for i, shape in enumerate(data["shapes"]):
            if shape["label"] not in value_of:
                raise AnnotationError(
                    f"{path}: shape {i} has label '{shape['label']}', which is not in the "
                    f"classes ({', '.join(names)}); add it to --classes"
                )
        image, ext, hw = _image_of(path, data, images)
        stated = (data.get("imageHeight"), data.get("imageWidth"))
        if None not in stated and tuple(stated) != hw:
            if isinstance(image, bytes):
                raise AnnotationError(
                    f"{path}: imageHeight x imageWidth is {stated[0]}x{stated[1]} but the "
                    f"embedded image is {hw[0]}x{hw[1]}"
                )
            check_size(str(path), image, stated)
        split = rel.parts[0] if by_split else "train"
        inner = Path(*rel.parts[1:]) if by_split else rel
        samples.append(
            Sample(
                split=split,
                name=str(inner.with_suffix(ext)),
                image=image,
                mask=_painter(path, data["shapes"], hw, value_of, unlabelled),
                source=str(path),
            )
        )
    return Export(classes=names, samples=samples, has_splits=by_split)


def _painter(
    path: Path, shapes: list[dict], hw: tuple[int, int], value_of: dict, unlabelled: int
) -> Callable[[], np.ndarray]:
    def paint() -> np.ndarray:
        h, w = hw
        out = np.full((h, w), unlabelled, dtype=np.uint8)
        for i, shape in enumerate(shapes):
            where = f"{path}: shape {i} ('{shape['label']}')"
            out[shape_mask(shape, h, w, where)] = value_of[shape["label"]]
        return out

    return paint
