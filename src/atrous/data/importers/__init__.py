"""Annotation-tool exports (COCO, LabelMe, CVAT) -> the dataset layout atrous reads.

`import_export` reads an export with the importer of its format and writes
``output/dataset.yaml`` with ``images/<split>/`` and ``masks/<split>/`` (uint8 class ids, 255 for
unlabelled pixels), the layout `atrous.data.datasets.custom.load_dataset_yaml` reads.
``atrous prepare coco|labelme|cvat`` is its command line.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from .coco import read_coco
from .common import AnnotationError, Export, assign_val_split, open_source, write_dataset
from .cvat import read_cvat
from .labelme import read_classes, read_labelme

__all__ = ["FORMATS", "AnnotationError", "ImportResult", "import_export", "read_classes"]

FORMATS = ("coco", "labelme", "cvat")


@dataclass
class ImportResult:
    """What `import_export` wrote: the YAML file, the classes, images per split, notes."""

    yaml_path: Path
    classes: list[str]
    splits: dict[str, int]
    notes: list[str]


def _coco_files(root: Path) -> list[Path]:
    """COCO instance files in a folder: ``instances_*.json`` (or any COCO JSON) in it and in
    ``annotations/``, Roboflow's ``<split>/_annotations.coco.json``."""
    patterns = ("instances_*.json", "annotations/instances_*.json", "*/_annotations.coco.json")
    for pattern in patterns:
        found = sorted(root.glob(pattern))
        if found:
            return found
    candidates = sorted(root.glob("*.json")) + sorted(root.glob("annotations/*.json"))
    coco = []
    for p in candidates:
        with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "annotations" in data and "images" in data:
                coco.append(p)
    if not coco:
        raise AnnotationError(f"{root}: no COCO instances JSON file (instances_*.json)")
    return coco


def _read(
    fmt: str,
    sources: list[Path],
    *,
    images: Path | None,
    classes: list[str] | None,
    background: str | None,
) -> Export:
    if fmt == "coco":
        files = []
        for s in sources:
            files += _coco_files(s) if s.is_dir() else [s]
        return read_coco(files, images=images, background=background)
    if len(sources) != 1:
        raise AnnotationError(f"{fmt}: give one export folder or zip, got {len(sources)}")
    if fmt == "labelme":
        if background is not None:
            raise AnnotationError(
                "--background is for COCO and CVAT polygons; LabelMe's unlabelled pixels are "
                "'_background_' when the classes have it"
            )
        return read_labelme(sources[0], classes=classes, images=images)
    if classes is not None:
        raise AnnotationError(f"--classes is for LabelMe; a {fmt} export names its own classes")
    return read_cvat(sources[0], images=images, background=background)


def import_export(
    fmt: str,
    sources: list[str | Path],
    output: str | Path,
    *,
    images: str | Path | None = None,
    classes: list[str] | None = None,
    background: str | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ImportResult:
    """Convert an annotation-tool export into ``output/dataset.yaml`` and its images and masks.

    Args:
        fmt: "coco", "labelme" or "cvat".
        sources: COCO JSON files or folders holding them (several files: several splits); a
            folder of LabelMe JSON files; a CVAT export folder. Each may also be a zip file.
        output: a new (or empty) folder.
        images: folder holding the images when the export does not.
        classes: LabelMe class names (see `atrous.data.importers.labelme`).
        background: COCO / CVAT XML: the class of pixels no annotation covers (default: ignored).
        val_fraction: share of the images moved to a "val" split, for exports without splits.
        seed: seed of that split.

    Raises:
        AnnotationError: bad input, naming the file and annotation; nothing is written then.
    """
    if fmt not in FORMATS:
        raise AnnotationError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    images_dir = Path(images) if images is not None else None
    if images_dir is not None and not images_dir.is_dir():
        raise AnnotationError(f"--images {images_dir} is not a folder")
    with contextlib.ExitStack() as stack:
        roots = [stack.enter_context(open_source(Path(s))) for s in sources]
        export = _read(fmt, roots, images=images_dir, classes=classes, background=background)
        if val_fraction is not None:
            if export.has_splits:
                names = sorted({s.split for s in export.samples})
                raise AnnotationError(
                    f"the export already has splits ({', '.join(names)}); drop --val-fraction"
                )
            assign_val_split(export.samples, val_fraction, seed)
        label = ", ".join(str(s) for s in sources)
        counts = write_dataset(export, Path(output), source=label, progress=progress)
    return ImportResult(
        yaml_path=Path(output) / "dataset.yaml",
        classes=list(export.classes),
        splits=counts,
        notes=export.notes,
    )
