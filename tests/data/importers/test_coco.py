"""COCO import: masks compared pixel for pixel with pycocotools' own COCO.annToMask."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from atrous.data.datasets.custom import load_dataset_yaml
from atrous.data.importers import AnnotationError, import_export
from atrous.data.importers.coco import rle_string_total

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

# Category ids out of order and with gaps: classes follow the ids (3 -> 0, 7 -> 1, 9 -> 2).
CATEGORIES = [{"id": 7, "name": "car"}, {"id": 3, "name": "road"}, {"id": 9, "name": "person"}]


def _blob(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.uniform(5, h - 5), rng.uniform(5, w - 5), rng.uniform(4, min(h, w) / 3)
    return ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.uint8)


def _uncompressed(m: np.ndarray) -> dict:
    """COCO's uncompressed RLE (what iscrowd annotations use): column-major runs from 0s."""
    flat = np.asfortranarray(m).reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"counts": runs, "size": list(m.shape)}


def _image(folder: Path, name: str, h: int, w: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)


def write_coco(root: Path, split: str, *, seed: int = 0) -> Path:
    """instances_<split>.json and images/<name>.png: polygons (one in two parts), compressed
    RLE from pycocotools' encoder, an uncompressed crowd RLE, and overlaps."""
    images, anns = [], []
    for k, (h, w) in enumerate([(40, 60), (30, 50)]):
        name = f"{split}_{k}.png"
        _image(root / "images", name, h, w, seed + k)
        images.append({"id": 10 + k, "file_name": name, "height": h, "width": w})
        rle = mask_utils.encode(np.asfortranarray(_blob(h, w, seed + 10 + k)))
        rle["counts"] = rle["counts"].decode("ascii")
        crowd = _uncompressed(_blob(h, w, seed + 20 + k))
        anns += [
            {"segmentation": [[2, 2, 30, 3, 25, 20, 4, 18]], "category_id": 3, "iscrowd": 0},
            # two parts, overlapping the first: later on top
            {
                "segmentation": [[10, 10, 40, 10, 40, 25], [w, h, w - 8, h, w, h - 9]],
                "category_id": 7,
                "iscrowd": 0,
            },
            {"segmentation": rle, "category_id": 9, "iscrowd": 0},
            {"segmentation": crowd, "category_id": 9, "iscrowd": 1},
            {
                "segmentation": [[0, h - 10, 12, h - 10, 12, h, 0, h]],
                "category_id": 3,
                "iscrowd": 0,
            },
        ]
        for a in anns[-5:]:
            a["image_id"] = 10 + k
    for i, a in enumerate(anns):
        a["id"] = 100 + i
    path = root / f"instances_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return path


def expected_masks(path: Path, unlabelled: int = 255, offset: int = 0) -> dict[str, np.ndarray]:
    """Paint COCO.annToMask of every annotation in file order: what the importer promises."""
    coco = COCO(str(path))
    class_of = {3: 0 + offset, 7: 1 + offset, 9: 2 + offset}
    out = {}
    for img in coco.dataset["images"]:
        m = np.full((img["height"], img["width"]), unlabelled, np.uint8)
        for ann in coco.dataset["annotations"]:
            if ann["image_id"] == img["id"]:
                m[coco.annToMask(ann) == 1] = (
                    255 if ann["iscrowd"] else class_of[ann["category_id"]]
                )
        out[img["file_name"]] = m
    return out


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_two_files_become_splits_and_match_ann_to_mask(tmp_path):
    train = write_coco(tmp_path / "export", "train", seed=0)
    val = write_coco(tmp_path / "export", "val", seed=5)
    out = tmp_path / "dataset"
    result = import_export("coco", [train, val], out, progress=False)
    assert result.splits == {"train": 2, "val": 2}
    spec = load_dataset_yaml(out / "dataset.yaml")
    assert spec["classes"] == ("road", "car", "person")  # category ids 3, 7, 9
    assert spec["ignore_value"] == 255
    for split, path in (("train", train), ("val", val)):
        for name, expected in expected_masks(path).items():
            got = _read(out / "masks" / split / name)
            np.testing.assert_array_equal(got, expected)
            assert (out / "images" / split / name).read_bytes() == (
                tmp_path / "export" / "images" / name
            ).read_bytes()
    # the rule, on a pixel where the two polygons overlap: the later (car) is on top
    assert _read(out / "masks" / "train" / "train_0.png")[12, 20] == 1
    assert set(np.unique(expected)) <= {0, 1, 2, 255} and (expected == 255).any()


def test_background_names_the_unlabelled_pixels(tmp_path):
    train = write_coco(tmp_path / "export", "train")
    out = tmp_path / "dataset"
    import_export("coco", [train], out, background="background", progress=False)
    spec = load_dataset_yaml(out / "dataset.yaml")
    assert spec["classes"] == ("background", "road", "car", "person")
    for name, expected in expected_masks(train, unlabelled=0, offset=1).items():
        np.testing.assert_array_equal(_read(out / "masks" / "train" / name), expected)


def test_val_fraction_is_seeded_and_refused_when_the_export_has_splits(tmp_path):
    root = tmp_path / "export"
    images, anns = [], []
    for k in range(10):
        _image(root / "images", f"im{k}.png", 8, 8, k)
        # height and width are optional in some writers (then the file says)
        size = {"height": 8, "width": 8} if k % 2 else {}
        images.append({"id": k, "file_name": f"im{k}.png", **size})
        anns.append({"id": k, "image_id": k, "category_id": 1, "iscrowd": 0,
                     "segmentation": [[0, 0, 8, 0, 8, 8]]})  # fmt: skip
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    (root / "result.json").write_text(json.dumps(data))

    def val_names(out: Path, seed: int) -> list[str]:
        import_export("coco", [root / "result.json"], out, val_fraction=0.3, seed=seed,
                      progress=False)  # fmt: skip
        return sorted(p.name for p in (out / "images" / "val").iterdir())

    first, again = val_names(tmp_path / "a", 0), val_names(tmp_path / "b", 0)
    assert first == again and len(first) == 3
    assert len(list((tmp_path / "a" / "images" / "train").iterdir())) == 7
    assert val_names(tmp_path / "c", 1) != first
    yaml_splits = yaml.safe_load((tmp_path / "a" / "dataset.yaml").read_text())["splits"]
    assert list(yaml_splits) == ["train", "val"]

    train = write_coco(tmp_path / "e2", "train")
    val = write_coco(tmp_path / "e2", "val", seed=3)
    with pytest.raises(AnnotationError, match="already has splits"):
        import_export("coco", [train, val], tmp_path / "d", val_fraction=0.2, progress=False)


def test_images_found_through_the_images_option_and_coco_2017_layout(tmp_path):
    # annotations/instances_val2017.json with the images in val2017/ (the COCO layout)
    root = tmp_path / "coco"
    _image(root / "val2017", "a.png", 10, 12, 0)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 12}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                         "segmentation": [[0, 0, 12, 0, 12, 10]]}],
        "categories": [{"id": 1, "name": "a"}],
    }  # fmt: skip
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    result = import_export("coco", [root], tmp_path / "out", progress=False)
    assert result.splits == {"val2017": 1}
    # the same JSON elsewhere, its images given with --images
    lone = tmp_path / "lone.json"
    lone.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"lone\.json: image id 1: image 'a\.png' not found"):
        import_export("coco", [lone], tmp_path / "out2", progress=False)
    import_export("coco", [lone], tmp_path / "out3", images=root / "val2017", progress=False)
    assert (tmp_path / "out3" / "masks" / "train" / "a.png").is_file()


def _one(tmp_path: Path, ann: dict, *, size=(10, 12), file_size=None) -> Path:
    h, w = file_size or size
    _image(tmp_path / "images", "a.png", h, w, 0)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": size[0], "width": size[1]}],
        "annotations": [{"id": 42, "image_id": 1, "category_id": 1, "iscrowd": 0, **ann}],
        "categories": [{"id": 1, "name": "a"}],
    }
    path = tmp_path / "instances_train.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("ann", "message"),
    [
        ({"segmentation": [[0, 0, 5, 5]]}, r"annotation 42 .*polygon 0 has 2 points"),
        ({"segmentation": [[0, 0, 13, 0, 5, 5]]}, r"annotation 42 .*\(13, 0\) outside the 12x10"),
        ({"category_id": 5, "segmentation": [[0, 0, 5, 0, 5, 5]]}, r"annotation 42: category id 5"),
        ({"image_id": 2, "segmentation": [[0, 0, 5, 0, 5, 5]]}, r"annotation 42: image id 2"),
        ({"segmentation": {"counts": [120], "size": [12, 10]}}, r"annotation 42 .*RLE size 10x12"),
        ({"segmentation": {"counts": [100], "size": [10, 12]}}, r"42 .*add up to 100 pixels"),
        ({"segmentation": {"counts": "0`0", "size": [10, 12]}}, r"42 .*add up to"),
        ({"segmentation": {"counts": [130, -10], "size": [10, 12]}}, r"42 .*whole numbers"),
        ({"segmentation": []}, r"annotation 42 .*neither 'segmentation' polygons or RLE nor"),
        ({"segmentation": [], "bbox": [2, 2, 11, 3]}, r"42 .*bbox: polygon 0 has point \(13, 2\)"),
    ],
)
def test_bad_annotations_name_the_file_and_annotation(tmp_path, ann, message):
    path = _one(tmp_path, ann)
    out = tmp_path / "out"
    with pytest.raises(AnnotationError, match=message) as info:
        import_export("coco", [path], out, progress=False)
    assert str(path) in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))  # nothing left behind


def test_an_image_whose_size_is_not_the_json_s_is_refused(tmp_path):
    path = _one(tmp_path, {"segmentation": [[0, 0, 5, 0, 5, 5]]}, file_size=(10, 11))
    with pytest.raises(AnnotationError, match=r"image id 1: .* 12x10 image but .* is 11x10"):
        import_export("coco", [path], tmp_path / "out", progress=False)


def test_an_output_folder_with_files_is_never_written_into(tmp_path):
    path = _one(tmp_path, {"segmentation": [[0, 0, 5, 0, 5, 5]]})
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(AnnotationError, match="already exists and is not empty"):
        import_export("coco", [path], out, progress=False)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_rle_string_total_matches_pycocotools_encoder():
    rng = np.random.default_rng(0)
    for h, w in ((1, 1), (7, 9), (64, 33)):
        m = np.asfortranarray((rng.random((h, w)) < 0.3).astype(np.uint8))
        assert rle_string_total(mask_utils.encode(m)["counts"].decode()) == h * w


@pytest.mark.parametrize("order", ["car_last", "road_last"])
def test_overlap_rule_later_annotation_on_top(tmp_path, order):
    """Two squares overlapping in [10, 20) x [10, 20): the later one in the file wins there."""
    road = {"category_id": 3, "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]]}
    car = {"category_id": 7, "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}
    anns = [road, car] if order == "car_last" else [car, road]
    _image(tmp_path / "images", "a.png", 32, 32, 0)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}],
        "annotations": [{"id": i, "image_id": 1, "iscrowd": 0, **a} for i, a in enumerate(anns)],
        "categories": CATEGORIES,
    }
    (tmp_path / "instances_train.json").write_text(json.dumps(data))
    # zipped, as the tools hand out their exports
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as z:
        z.write(tmp_path / "instances_train.json", "export/instances_train.json")
        z.write(tmp_path / "images" / "a.png", "export/images/a.png")
    import_export("coco", [tmp_path / "export.zip"], tmp_path / "out", progress=False)
    got = _read(tmp_path / "out" / "masks" / "train" / "a.png")
    assert got[15, 15] == (1 if order == "car_last" else 0)  # car is class 1, road class 0
    assert got[5, 5] == 0 and got[25, 25] == 1 and got[25, 5] == 255


def test_an_exif_rotated_image_annotated_unturned_is_explained(tmp_path):
    (tmp_path / "images").mkdir()
    image = Image.new("RGB", (32, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: read upright as 20 wide, 32 high
    image.save(tmp_path / "images" / "a.jpg", exif=exif)
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 32}],
        "annotations": [],
        "categories": [{"id": 1, "name": "a"}],
    }
    (tmp_path / "instances_train.json").write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"is 20x32 .*EXIF orientation turns it upright"):
        import_export("coco", [tmp_path / "instances_train.json"], tmp_path / "o", progress=False)


def test_a_val_fraction_outside_0_1_is_refused(tmp_path):
    path = _one(tmp_path, {"segmentation": [[0, 0, 5, 0, 5, 5]]})
    with pytest.raises(AnnotationError, match="--val-fraction must be between 0 and 1"):
        import_export("coco", [path], tmp_path / "out", val_fraction=1.0, progress=False)
    assert not (tmp_path / "out").exists()
