"""CVAT exports -> class-id masks: "Segmentation mask 1.1" and "CVAT for images 1.1".

**Segmentation mask 1.1** (a Pascal-VOC-like folder)::

    labelmap.txt                         # "name:r,g,b:parts:actions", one label a line
    ImageSets/Segmentation/<subset>.txt  # image names without extension, one subset a file
    SegmentationClass/<name>.png         # one colour per label
    JPEGImages/<name>.jpg                # when exported with images (else --images DIR)

The colour PNGs are decoded with atrous' colour-coded mask support (`ColorCoding`, as
``mask_format: rgb`` reads them): classes and colours in labelmap order, and a colour that is not
in labelmap.txt is an error naming the file, the colour and its pixel count.

**CVAT for images 1.1** (``annotations.xml`` with the images under ``images/``; datumaro's
variant has one ``<subset>.xml`` a subset): classes are the
labels in ``<meta>`` order; ``<polygon>`` and ``<box>`` shapes are rasterised with pycocotools
(as CVAT's own mask export does through datumaro), ``<mask>`` shapes decoded from CVAT's RLE
(alternating background/foreground runs over the mask's box, row by row). Shapes are painted in
ascending ``z_order``, in file order within one z_order, a later one on top, which is how CVAT
draws and exports them. Pixels no shape covers get the ignore value, or the class named by
``background=``. Polylines, points, ellipses, cuboids and skeletons are not areas of a class
mask and are left out (counted in a note).

Subsets become splits (CVAT's "default" subset: "train").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from PIL import Image

from ..datasets.custom import IMAGE_EXTS
from ..image_io import ColorCoding
from .common import IGNORE_VALUE, AnnotationError, Export, Sample, check_size, find_image

__all__ = ["read_cvat", "read_cvat_masks", "read_cvat_xml"]

_AREAS = ("polygon", "box", "mask")
_EXTS = (*IMAGE_EXTS, *(e.upper() for e in IMAGE_EXTS))
_NOT_AREAS = ("polyline", "points", "ellipse", "cuboid", "skeleton")


def _split(subset: str | None) -> str:
    subset = (subset or "default").strip().lower()
    return "train" if subset == "default" else subset


def read_cvat(root: Path, *, images: Path | None = None, background: str | None = None) -> Export:
    """Read a CVAT export folder of either format (told apart by its files).

    Raises:
        AnnotationError: neither ``annotations.xml`` (or datumaro's ``<subset>.xml`` files)
            nor ``labelmap.txt`` in `root`.
    """
    xml = sorted(root.rglob("annotations.xml")) or [
        p for p in sorted(root.glob("*.xml")) if _starts_with_annotations(p)
    ]
    if xml:
        return read_cvat_xml(xml[:1] if xml[0].name == "annotations.xml" else xml,
                             images=images, background=background)  # fmt: skip
    labelmap = sorted(root.rglob("labelmap.txt"))
    if labelmap:
        if background is not None:
            raise AnnotationError(
                "--background applies to polygon exports; in a Segmentation mask export the "
                "unlabelled pixels have the colour of labelmap.txt's 'background' label"
            )
        return read_cvat_masks(labelmap[0].parent, images=images)
    raise AnnotationError(
        f"{root}: neither annotations.xml (CVAT for images 1.1) nor labelmap.txt (Segmentation "
        "mask 1.1); for a COCO export use `atrous prepare coco`"
    )


def _starts_with_annotations(path: Path) -> bool:
    """Whether an XML file's root element is <annotations> (datumaro's <subset>.xml files)."""
    with open(path, "rb") as f:
        return b"<annotations>" in f.read(512)


def _read_labelmap(path: Path) -> tuple[list[str], list[tuple[int, int, int]]]:
    names, colors = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(":")
        try:
            color = tuple(int(v) for v in parts[1].split(","))
        except (IndexError, ValueError):
            color = ()
        if len(color) != 3 or not all(0 <= v <= 255 for v in color):
            raise AnnotationError(
                f"{path}:{lineno}: expected 'name:r,g,b:parts:actions', got {line!r}"
            )
        names.append(parts[0])
        colors.append(color)
    if not names:
        raise AnnotationError(f"{path}: no labels")
    return names, colors


def read_cvat_masks(root: Path, *, images: Path | None = None) -> Export:
    """Read a "Segmentation mask 1.1" export folder (the one holding labelmap.txt).

    Raises:
        AnnotationError: a bad labelmap line, a listed image without its mask or image file.
    """
    names, colors = _read_labelmap(root / "labelmap.txt")
    try:
        coding = ColorCoding(colors=tuple(colors))
    except ValueError as e:
        raise AnnotationError(f"{root / 'labelmap.txt'}: {e}") from None
    lists = sorted((root / "ImageSets" / "Segmentation").glob("*.txt"))
    if lists:
        entries = [
            (_split(f.stem), line.strip(), str(f))
            for f in lists
            for line in f.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    else:  # no subset lists: every mask is in one split
        entries = [
            (_split(None), str(p.relative_to(root / "SegmentationClass").with_suffix("")), "")
            for p in sorted((root / "SegmentationClass").rglob("*.png"))
        ]
    folders = [f for f in (images, root / "JPEGImages", root / "images") if f is not None]
    samples = []
    for split, name, listed_in in entries:
        mask_path = root / "SegmentationClass" / f"{name}.png"
        where = f"{listed_in or root}: '{name}'"
        if not mask_path.is_file():
            raise AnnotationError(f"{where}: mask {mask_path} does not exist")
        candidates = (f / f"{name}{ext}" for f in folders for ext in _EXTS)
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise AnnotationError(
                f"{where}: no image {name}.* in {', '.join(str(f) for f in folders)}; export "
                "with images or give --images DIR"
            )
        with Image.open(mask_path) as m:
            check_size(f"{mask_path}", image, (m.height, m.width))
        samples.append(
            Sample(
                split=split,
                name=f"{name}{image.suffix}",
                image=image,
                mask=_decoder(mask_path, coding),
                source=str(mask_path),
            )
        )
    if not samples:
        raise AnnotationError(f"{root}: no masks in SegmentationClass/")
    return Export(
        classes=names,
        colors=colors,
        samples=samples,
        has_splits=len({s.split for s in samples}) > 1,
    )


def _decoder(path: Path, coding: ColorCoding) -> Callable[[], np.ndarray]:
    def decode() -> np.ndarray:
        with Image.open(path) as m:
            rgb = np.asarray(m.convert("RGB"))
        return coding.decode(rgb, ignore_label=IGNORE_VALUE, file_name=str(path))

    return decode


def _xml_labels(root: ElementTree.Element, path: Path) -> list[str]:
    names: list[str] = []
    for labels in root.iter("labels"):
        for label in labels.findall("label"):
            name = label.findtext("name")
            if name and name not in names:
                names.append(name)
    if not names:
        raise AnnotationError(f"{path}: no <labels> in <meta>")
    return names


def _parse_xml(path: Path) -> ElementTree.Element:
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as e:
        raise AnnotationError(f"{path}: not readable XML ({e})") from None
    if root.tag != "annotations":
        raise AnnotationError(f"{path}: not a CVAT export (<annotations> expected)")
    if root.find("track") is not None:
        raise AnnotationError(
            f"{path}: a 'CVAT for video' export (tracks); export as 'CVAT for images 1.1'"
        )
    return root


def read_cvat_xml(
    paths: list[Path], *, images: Path | None = None, background: str | None = None
) -> Export:
    """Read "CVAT for images 1.1" XML: CVAT's ``annotations.xml``, or datumaro's one
    ``<subset>.xml`` a subset; the images under ``images/`` (or ``images/<subset>/``) beside.

    An image's split is its ``subset`` attribute, else (several files) the file's name.

    Raises:
        AnnotationError: not CVAT XML, a video (track) export, files whose labels differ, an
            unknown label, a bad polygon, box or mask, a missing image or one whose size is not
            the XML's.
    """
    roots = [(p, _parse_xml(p)) for p in paths]
    classes = _xml_labels(roots[0][1], roots[0][0])
    for p, root in roots[1:]:
        if _xml_labels(root, p) != classes:
            raise AnnotationError(f"{p}: its labels are not those of {roots[0][0]}")
    unlabelled = IGNORE_VALUE
    if background is not None:
        if background not in classes:
            classes.insert(0, background)
        unlabelled = classes.index(background)
    samples, skipped = [], 0
    for path, root in roots:
        for img in root.findall("image"):
            name = img.get("name", "")
            where = f"{path}: image id {img.get('id')} '{name}'"
            subset = img.get("subset") or (path.stem if len(roots) > 1 else None)
            folders = [f for f in (images,) if f is not None]
            folders += [path.parent / "images" / (subset or "default"),
                        path.parent / "images", path.parent]  # fmt: skip
            image = find_image(name, folders, where=where)
            hw = (int(img.get("height", 0)), int(img.get("width", 0)))
            check_size(where, image, hw)
            shapes = []
            for k, el in enumerate(img):
                if el.tag in _NOT_AREAS:
                    skipped += 1
                    continue
                if el.tag not in _AREAS:
                    continue
                if el.get("label") not in classes:
                    raise AnnotationError(
                        f"{where}: <{el.tag}> {k} has label '{el.get('label')}', which is not "
                        f"in <meta>'s labels ({', '.join(classes)})"
                    )
                shapes.append((int(el.get("z_order", 0) or 0), k, el))
            shapes.sort(key=lambda s: (s[0], s[1]))
            painter = _xml_painter(where, [(k, el) for _, k, el in shapes], hw, classes, unlabelled)
            samples.append(
                Sample(
                    split=_split(subset),
                    name=Path(name.replace("\\", "/")).name,
                    image=image,
                    mask=painter,
                    source=f"{path} ({name})",
                )
            )
    if not samples:
        raise AnnotationError(f"{paths[0]}: no <image> elements")
    notes = [f"left out {skipped} polylines/points/ellipses/cuboids/skeletons"] if skipped else []
    return Export(
        classes=classes,
        samples=samples,
        has_splits=len({s.split for s in samples}) > 1,
        notes=notes,
    )


def _floats(el: ElementTree.Element, keys: tuple[str, ...], where: str) -> list[float]:
    try:
        return [float(el.get(k, "")) for k in keys]
    except ValueError:
        raise AnnotationError(f"{where}: needs numbers in {', '.join(keys)}") from None


def _polygon_mask(xy: list[float], h: int, w: int, where: str) -> np.ndarray:
    from .coco import annotation_mask

    return annotation_mask({"segmentation": [xy]}, h, w, where)


def _rle_mask(el: ElementTree.Element, h: int, w: int, where: str) -> np.ndarray:
    left, top, mw, mh = (int(v) for v in _floats(el, ("left", "top", "width", "height"), where))
    try:
        runs = [int(v) for v in (el.get("rle") or "").split(",")]
    except ValueError:
        raise AnnotationError(f"{where}: 'rle' must be comma-separated integers") from None
    if left < 0 or top < 0 or left + mw > w or top + mh > h:
        raise AnnotationError(
            f"{where}: mask box {mw}x{mh} at ({left}, {top}) is outside the {w}x{h} image"
        )
    if sum(runs) != mw * mh or min(runs, default=0) < 0:
        raise AnnotationError(
            f"{where}: mask runs add up to {sum(runs)} pixels, its {mw}x{mh} box has {mw * mh}"
        )
    values = np.arange(len(runs)) % 2  # runs alternate, starting with background
    out = np.zeros((h, w), dtype=np.uint8)
    out[top : top + mh, left : left + mw] = np.repeat(values, runs).reshape(mh, mw)
    return out


def _shape_mask(k: int, el: ElementTree.Element, h: int, w: int, where: str) -> np.ndarray:
    where = f"{where}: <{el.tag}> {k} ('{el.get('label')}')"
    if el.tag == "mask":
        return _rle_mask(el, h, w, where)
    if el.tag == "box":
        x0, y0, x1, y1 = _floats(el, ("xtl", "ytl", "xbr", "ybr"), where)
        return _polygon_mask([x0, y0, x1, y0, x1, y1, x0, y1], h, w, where)
    try:
        xy = [float(v) for p in (el.get("points") or "").split(";") for v in p.split(",")]
    except ValueError:
        raise AnnotationError(f"{where}: 'points' must be 'x,y;x,y;...'") from None
    return _polygon_mask(xy, h, w, where)


def _xml_painter(
    where: str,
    shapes: list[tuple[int, ElementTree.Element]],
    hw: tuple[int, int],
    classes: list[str],
    unlabelled: int,
) -> Callable[[], np.ndarray]:
    def paint() -> np.ndarray:
        h, w = hw
        out = np.full((h, w), unlabelled, dtype=np.uint8)
        for k, el in shapes:
            out[_shape_mask(k, el, h, w, where).astype(bool)] = classes.index(el.get("label"))
        return out

    return paint
