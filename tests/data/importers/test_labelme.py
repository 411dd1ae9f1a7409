"""LabelMe import on files written by labelme's own LabelFile, masks compared pixel for pixel
with labelme's own shapes_to_label (labelme imports without a display; it opens no window)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from labelme import LabelFile
from labelme.utils import shapes_to_label
from PIL import Image

from atrous.data.datasets.custom import load_dataset_yaml
from atrous.data.image_io import DEFAULT_MAX_IMAGE_PIXELS
from atrous.data.importers import AnnotationError, import_export, read_classes

# Importing labelme switches Pillow's decompression-bomb limit off for the whole process
# (PIL.Image.MAX_IMAGE_PIXELS = None); the rest of the suite runs with Pillow's default.
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
H, W = 48, 64


def _shape(label: str, points, shape_type: str = "polygon") -> dict:
    return {"label": label, "points": [list(map(float, p)) for p in points],
            "group_id": None, "description": "", "shape_type": shape_type, "flags": {},
            "mask": None}  # fmt: skip


SHAPES = [
    _shape("road", [(0, 30), (63.5, 28.2), (64, 48), (0, 48)]),
    _shape("car", [(10.4, 20.7), (30.2, 40.9)], "rectangle"),
    _shape("person", [(40.5, 20.5), (47.3, 26.1)], "circle"),  # over the road: on top
    _shape("__ignore__", [(2, 2), (12, 3.5), (7, 11)]),
    _shape("car", [(25, 5), (50, 8), (45, 18), (28, 15.5)]),
]


def _write(folder: Path, stem: str, shapes: list[dict], *, embed: bool, seed: int = 0) -> Path:
    """A LabelMe file saved by labelme's LabelFile.save, the image beside it or embedded."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = folder / f"{stem}.jpg"
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(image)
    data = LabelFile.load_image_file(str(image)) if embed else None
    json_path = folder / f"{stem}.json"
    LabelFile().save(str(json_path), shapes=shapes, image_path=image.name, image_height=H,
                     image_width=W, image_data=data)  # fmt: skip
    if embed:
        image.unlink()  # only the embedded copy is left
    return json_path


def _labelme_mask(json_path: Path, classes: list[str]) -> np.ndarray:
    """labelme's own rendering: its reader, then shapes_to_label with labelme2voc's numbering
    (__ignore__ -1, saved as 255 by labelme's lblsave)."""
    label_file = LabelFile(str(json_path))
    value = {c: i for i, c in enumerate(c for c in classes if c != "__ignore__")}
    value["__ignore__"] = -1
    cls, _ = shapes_to_label((H, W), label_file.shapes, value)
    return np.where(cls == -1, 255, cls).astype(np.uint8)


def test_masks_match_labelme_shapes_to_label_embedded_and_beside(tmp_path):
    src = tmp_path / "labelme"
    _write(src, "a", SHAPES, embed=True, seed=1)
    _write(src, "b", SHAPES[::-1], embed=False, seed=2)  # reversed: a different overlap result
    out = tmp_path / "dataset"
    result = import_export("labelme", [src], out, progress=False)
    # labelme_json_to_dataset's numbering: _background_ then the labels, sorted
    assert result.classes == ["_background_", "car", "person", "road"]
    spec = load_dataset_yaml(out / "dataset.yaml")
    assert spec["classes"] == tuple(result.classes)
    for stem in ("a", "b"):
        got = np.asarray(Image.open(out / "masks" / "train" / f"{stem}.png"))
        np.testing.assert_array_equal(got, _labelme_mask(src / f"{stem}.json", result.classes))
    a = np.asarray(Image.open(out / "masks" / "train" / "a.png"))
    assert a[23, 44] == 2 and a[0, 63] == 0 and a[5, 6] == 255  # person, background, ignore
    assert {0, 1, 2, 3, 255} == set(np.unique(a).tolist())
    # the embedded image is written as the bytes labelme stored
    assert Image.open(out / "images" / "train" / "a.jpg").size == (W, H)
    assert (out / "images" / "train" / "b.jpg").read_bytes() == (src / "b.jpg").read_bytes()


def test_classes_file_in_labelme2voc_format(tmp_path):
    src = tmp_path / "labelme"
    _write(src, "a", SHAPES, embed=False)
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\nroad\ncar\nperson\nbicycle\n")
    classes = read_classes(str(labels))
    out = tmp_path / "dataset"
    result = import_export("labelme", [src], out, classes=classes, progress=False)
    assert result.classes == ["_background_", "road", "car", "person", "bicycle"]
    got = np.asarray(Image.open(out / "masks" / "train" / "a.png"))
    np.testing.assert_array_equal(got, _labelme_mask(src / "a.json", classes))


def test_without_background_class_unlabelled_pixels_are_ignored(tmp_path):
    src = tmp_path / "labelme"
    _write(src, "a", SHAPES, embed=False)
    out = tmp_path / "dataset"
    import_export("labelme", [src], out, classes=read_classes("road,car,person"), progress=False)
    got = np.asarray(Image.open(out / "masks" / "train" / "a.png"))
    assert got[0, 63] == 255 and got[40, 5] == 0


def test_split_folders_are_kept(tmp_path):
    src = tmp_path / "labelme"
    _write(src / "train", "a", SHAPES, embed=False)
    _write(src / "val", "b", SHAPES, embed=False)
    result = import_export("labelme", [src], tmp_path / "dataset", progress=False)
    assert result.splits == {"train": 1, "val": 1}


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (_shape("car", [(1, 1), (5, 5)]), r"shape 0 \('car'\): polygon has 2 points"),
        (_shape("car", [(1, 1), (70, 5), (3, 9)]), r"shape 0 .*\(70, 5\) is outside the 64x48"),
        (_shape("car", [(1, 1), (5, 5), (3, 3)], "circle"), r"shape 0 .*circle needs 2 points"),
    ],
)
def test_bad_shapes_name_the_file_and_shape(tmp_path, shape, message):
    # the first shape is fine, the bad one second (labelme's LabelFile.save writes it as given)
    path = _write(tmp_path / "labelme", "a", [SHAPES[0], shape], embed=False)
    with pytest.raises(AnnotationError, match=message.replace("shape 0", "shape 1")) as info:
        import_export("labelme", [tmp_path / "labelme"], tmp_path / "out", progress=False)
    assert str(path) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_unknown_label_and_missing_image(tmp_path):
    src = tmp_path / "labelme"
    path = _write(src, "a", SHAPES, embed=False)
    with pytest.raises(AnnotationError, match=r"a\.json: shape 2 has label 'person'"):
        import_export("labelme", [src], tmp_path / "o1", classes=["road", "car", "__ignore__"],
                      progress=False)  # fmt: skip
    (src / "a.jpg").unlink()
    with pytest.raises(AnnotationError, match=rf"{path}: no imageData and image 'a\.jpg' not"):
        import_export("labelme", [src], tmp_path / "o2", progress=False)


def test_an_image_path_from_another_machine_and_a_missing_classes_file(tmp_path):
    src = tmp_path / "labelme"
    path = _write(src, "a", SHAPES, embed=False)
    data = json.loads(path.read_text())
    data["imagePath"] = "C:\\Users\\someone\\photos\\a.jpg"  # saved on Windows
    path.write_text(json.dumps(data))
    result = import_export("labelme", [src], tmp_path / "out", progress=False)
    assert result.splits == {"train": 1}
    with pytest.raises(AnnotationError, match=r"--classes lables\.txt: no such file"):
        read_classes("lables.txt")


@pytest.mark.parametrize(
    ("shape_type", "points"),
    [
        ("polygon", [(3.3, 4.7), (60.2, 10.1), (40.5, 47.9), (0, 30)]),
        ("rectangle", [(50.6, 40.2), (12.1, 3.9)]),  # corners in either order
        ("circle", [(30.5, 20.25), (38.0, 31.5)]),  # reaching past the border
        ("oriented_rectangle", [(10, 5), (30, 10), (25, 30), (5, 25)]),
        ("line", [(2, 2), (60, 45)]),
        ("linestrip", [(2, 40), (20, 5), (40, 40), (63, 1)]),
        ("point", [(31.5, 22.5)]),
    ],
)
def test_each_shape_type_is_drawn_as_labelme_shape_to_mask_draws_it(shape_type, points):
    from labelme.utils import shape_to_mask

    from atrous.data.importers.labelme import shape_mask

    shape = _shape("car", points, shape_type)
    expected = shape_to_mask((H, W), shape["points"], shape_type)
    got = shape_mask(shape, H, W, "x.json: shape 0")
    assert got.any()
    np.testing.assert_array_equal(got, expected)


def test_a_mask_shape_as_labelme_saves_it(tmp_path):
    from labelme.utils import img_arr_to_b64

    blob = np.zeros((11, 16), bool)
    blob[2:9, 3:14] = True
    blob[0, 0] = True
    mask_shape = _shape("person", [(20, 10), (35, 20)], "mask")
    mask_shape["mask"] = img_arr_to_b64(blob.astype(np.uint8))  # what labelme's app writes
    src = tmp_path / "labelme"
    path = _write(src, "a", [SHAPES[0], mask_shape], embed=False)
    result = import_export("labelme", [src], tmp_path / "out", progress=False)
    got = np.asarray(Image.open(tmp_path / "out" / "masks" / "train" / "a.png"))
    np.testing.assert_array_equal(got, _labelme_mask(path, result.classes))
    assert got[10, 20] == result.classes.index("person")
