"""What every importer shares: the imported samples, the split rule, zip sources, the writer.

An importer reads an export into an `Export`: the class names and one `Sample` per image, whose
mask is rasterised only when the writer asks for it (so a large export is never held in memory
at once). `write_dataset` then writes the layout `load_dataset_yaml` reads::

    DIR/dataset.yaml
    DIR/images/<split>/<name>.<ext>     the image, copied as it was
    DIR/masks/<split>/<name>.png        uint8 class ids, IGNORE_VALUE for unlabelled pixels

into a fresh hidden folder beside DIR that is renamed to DIR only when everything is written, so
a bad annotation found halfway leaves nothing behind, and nothing that exists is overwritten.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ..errors import DatasetError
from ..image_io import image_size

__all__ = [
    "IGNORE_VALUE",
    "AnnotationError",
    "Export",
    "Sample",
    "assign_val_split",
    "find_image",
    "open_source",
    "split_name",
    "write_dataset",
]

IGNORE_VALUE = 255
# Names that say which split a file or folder holds (instances_val2017.json, train/, ...).
_SPLIT_PREFIXES = ("train", "val", "test")


class AnnotationError(DatasetError):
    """An export that cannot be converted; the message names the file and the annotation."""


@dataclass
class Sample:
    """One image of an export.

    Attributes:
        split: the split it belongs to ("train" when the export has none).
        name: its path inside the split's image folder, with extension (``a.jpg``, ``sub/a.jpg``).
        image: the image file to copy, or its encoded bytes (LabelMe's embedded ``imageData``).
        mask: rasterises the ``(H, W)`` uint8 class-id mask (IGNORE_VALUE: unlabelled); raises
            `AnnotationError` naming the file and annotation for bad input.
        source: the annotation file, for messages.
    """

    split: str
    name: str
    image: Path | bytes
    mask: Callable[[], np.ndarray]
    source: str


@dataclass
class Export:
    """An export read by an importer.

    Attributes:
        classes: class names; index = class id in the masks.
        samples: every image.
        colors: one RGB colour per class when the tool defines them (CVAT), else None.
        has_splits: the export itself names the splits (then ``--val-fraction`` is refused).
        notes: what the user should know but is no error (e.g. shapes left out).
    """

    classes: list[str]
    samples: list[Sample]
    colors: list[tuple[int, int, int]] | None = None
    has_splits: bool = False
    notes: list[str] = field(default_factory=list)


def split_name(name: str) -> str | None:
    """The split a file or folder name stands for (``instances_val2017`` -> ``val2017``), if any.

    A name counts when, lower-cased and without an ``instances_`` prefix, it starts with
    train/val/test (``train``, ``val2017``, ``validation``, ``test-dev``).
    """
    stem = name.lower()
    stem = stem.removeprefix("instances_")
    return stem if stem.startswith(_SPLIT_PREFIXES) else None


def assign_val_split(samples: list[Sample], fraction: float, seed: int) -> None:
    """Move a fixed, seeded share of the samples to split "val" (the rest become "train").

    The images are ordered by name and shuffled with ``numpy.random.default_rng(seed)``, so the
    same export and seed always give the same split; at least one image stays on each side when
    there are two or more.

    Raises:
        AnnotationError: `fraction` outside (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise AnnotationError(f"--val-fraction must be between 0 and 1 (exclusive), got {fraction}")
    order = sorted(range(len(samples)), key=lambda i: samples[i].name)
    shuffled = np.random.default_rng(seed).permutation(len(order))
    n_val = round(len(samples) * fraction)
    if len(samples) >= 2:
        n_val = min(max(n_val, 1), len(samples) - 1)
    val = {order[i] for i in shuffled[:n_val]}
    for i, sample in enumerate(samples):
        sample.split = "val" if i in val else "train"


@contextlib.contextmanager
def open_source(path: Path) -> Iterator[Path]:
    """`path` itself, or a zip archive extracted into a temporary folder (removed afterwards);
    a zip holding one folder yields that folder.

    Raises:
        AnnotationError: `path` does not exist or is a damaged zip file.
    """
    if not path.exists():
        raise AnnotationError(f"{path} does not exist")
    if path.is_dir() or not zipfile.is_zipfile(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="atrous-import-") as tmp:
        try:
            with zipfile.ZipFile(path) as archive:
                # extractall drops ".." and absolute parts of member names: nothing lands outside.
                archive.extractall(tmp)
        except (zipfile.BadZipFile, OSError) as e:
            raise AnnotationError(f"{path}: cannot extract the zip file ({e})") from None
        root = Path(tmp)
        # a zip of a folder: its content is the export
        while len(entries := list(root.iterdir())) == 1 and entries[0].is_dir():
            root = entries[0]
        yield root


def find_image(name: str, folders: list[Path], *, where: str) -> Path:
    """The first of ``folder/name`` and ``folder/basename(name)`` that exists.

    Raises:
        AnnotationError: none exists; names `where` (file and annotation) and every folder tried.
    """
    name = name.replace("\\", "/")
    tried = []
    for folder in folders:
        for candidate in (folder / name, folder / os.path.basename(name)):
            if candidate.is_file():
                return candidate
        if folder not in tried:
            tried.append(folder)
    raise AnnotationError(
        f"{where}: image '{name}' not found in {', '.join(str(f) for f in tried)}; give the "
        "folder that holds the images with --images DIR"
    )


def check_size(where: str, image: Path, expected: tuple[int, int]) -> None:
    """Refuse an annotation whose stated (height, width) is not the image's.

    Raises:
        AnnotationError: naming the annotation file and the image.
    """
    actual = tuple(image_size(image))
    if actual != tuple(expected):
        why = (
            "its EXIF orientation turns it upright, as atrous reads it; annotate the upright "
            "image or remove the orientation tag"
            if actual == tuple(expected)[::-1]
            else "was the image resized or replaced after annotation?"
        )
        raise AnnotationError(
            f"{where}: the annotation is for a {expected[1]}x{expected[0]} image but {image} is "
            f"{actual[1]}x{actual[0]} (width x height); {why}"
        )


def _check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise AnnotationError(
            f"{output} already exists and is not empty; give --output a new folder (nothing "
            "there is overwritten)"
        )


def _place_image(image: Path | bytes, dest: Path) -> None:
    # A copy, not a link: editing the prepared dataset must not change the export.
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, bytes):
        dest.write_bytes(image)
    else:
        shutil.copyfile(image, dest)


def write_dataset(
    export: Export,
    output: Path,
    *,
    source: str,
    progress: bool = True,
) -> dict[str, int]:
    """Write `export` as ``output/dataset.yaml`` with its images and class-id masks.

    Returns:
        split name -> number of images, in the order written to the YAML file.

    Raises:
        AnnotationError: `output` exists and is not empty, two images would get the same name,
            or a sample's mask cannot be rasterised (then nothing is left behind).
    """
    output = Path(output)
    _check_output(output)
    if not export.samples:
        raise AnnotationError(f"{source}: the export holds no images")
    if len(export.classes) > IGNORE_VALUE:
        raise AnnotationError(
            f"{source}: {len(export.classes)} classes; at most {IGNORE_VALUE} fit in a mask "
            f"beside the ignore value {IGNORE_VALUE}"
        )
    seen: dict[tuple[str, str], str] = {}
    for s in export.samples:
        key = (s.split, os.path.splitext(s.name)[0].lower())
        if key in seen:
            raise AnnotationError(
                f"{s.source} and {seen[key]} both give an image '{key[1]}' in split '{s.split}'; "
                "rename one of them"
            )
        seen[key] = s.source
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    from tqdm import tqdm

    try:
        counts: dict[str, int] = {}
        for s in tqdm(export.samples, desc="prepare", unit="image", disable=not progress):
            mask = s.mask()
            mask_path = tmp / "masks" / s.split / (os.path.splitext(s.name)[0] + ".png")
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask, mode="L").save(mask_path)
            _place_image(s.image, tmp / "images" / s.split / s.name)
            counts[s.split] = counts.get(s.split, 0) + 1
        order = sorted(counts, key=lambda n: (not n.startswith("train"), n))
        spec = {
            "classes": list(export.classes),
            "ignore_value": IGNORE_VALUE,
            **({"colors": [list(c) for c in export.colors]} if export.colors else {}),
            "splits": {n: {"images": f"images/{n}", "masks": f"masks/{n}"} for n in order},
        }
        header = f"# written by `atrous prepare` from {source}\n"
        text = header + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)
        (tmp / "dataset.yaml").write_text(text, encoding="utf-8")
        if output.exists():
            output.rmdir()  # empty, checked above
        os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {n: counts[n] for n in order}
