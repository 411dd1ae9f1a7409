"""CVAT import: "Segmentation mask 1.1" (zip) and "CVAT for images 1.1" XML, laid out as CVAT's
export documentation describes them (no CVAT server runs here to write them)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from atrous.data.datasets.custom import load_dataset_yaml
from atrous.data.errors import UnknownColorError
from atrous.data.importers import AnnotationError, import_export

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

LABELMAP = (
    "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:250,50,83::\ntree:51,221,255::\n"
)
COLORS = np.array([[0, 0, 0], [250, 50, 83], [51, 221, 255]], np.uint8)


def _image(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _seg_mask_export(root: Path, *, palette: bool = False) -> dict[str, np.ndarray]:
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "labelmap.txt").write_text(LABELMAP)
    ids = {}
    for subset, names in (("train", ["a", "b"]), ("val", ["c"])):
        (root / "ImageSets" / "Segmentation" / f"{subset}.txt").write_text("\n".join(names) + "\n")
        for k, name in enumerate(names):
            rng = np.random.default_rng(k + len(subset))
            lab = rng.integers(0, 3, (12, 16)).astype(np.uint8)
            ids[f"{subset}/{name}"] = lab
            (root / "SegmentationClass").mkdir(exist_ok=True)
            if palette:  # CVAT writes palette PNGs; their colours count, not their indices
                # indices swapped against the labelmap order (the swap is its own inverse)
                img = Image.fromarray(np.array([1, 0, 2], np.uint8)[lab], mode="P")
                img.putpalette(COLORS[[1, 0, 2]].reshape(-1).tolist())
            else:
                img = Image.fromarray(COLORS[lab])
            img.save(root / "SegmentationClass" / f"{name}.png")
            _image(root / "JPEGImages" / f"{name}.jpg", 12, 16, k)
    return ids


def _zip(folder: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(folder.rglob("*")):
            z.write(f, f.relative_to(folder))
    return path


@pytest.mark.parametrize("palette", [False, True])
def test_segmentation_mask_zip_is_decoded_by_colour(tmp_path, palette):
    ids = _seg_mask_export(tmp_path / "export", palette=palette)
    src = _zip(tmp_path / "export", tmp_path / "task_segmask.zip")
    out = tmp_path / "dataset"
    result = import_export("cvat", [src], out, progress=False)
    assert result.splits == {"train": 2, "val": 1}
    spec = load_dataset_yaml(out / "dataset.yaml")
    assert spec["classes"] == ("background", "car", "tree")
    assert spec["colors"] == tuple(tuple(c) for c in COLORS.tolist())
    for key, expected in ids.items():
        got = np.asarray(Image.open(out / "masks" / f"{key}.png"))
        np.testing.assert_array_equal(got, expected)
        assert (out / "images" / f"{key}.jpg").is_file()


def test_a_colour_missing_from_labelmap_names_the_file(tmp_path):
    _seg_mask_export(tmp_path / "export")
    bad = tmp_path / "export" / "SegmentationClass" / "b.png"
    rgb = np.asarray(Image.open(bad)).copy()
    rgb[0, :3] = (1, 2, 3)
    Image.fromarray(rgb).save(bad)
    with pytest.raises(UnknownColorError, match=r"b\.png.*\(1, 2, 3\)|b\.png.*1, 2, 3"):
        import_export("cvat", [tmp_path / "export"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def _cvat_rle(m: np.ndarray) -> str:
    """CVAT's mask RLE: row-major runs over the box, starting with background."""
    flat = m.reshape(-1)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ", ".join(str(r) for r in ([0, *runs] if flat[0] else runs))


XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><name>t</name><labels>
    <label><name>car</name><color>#fa3253</color><type>any</type><attributes/></label>
    <label><name>tree</name><color>#33ddff</color><type>any</type><attributes/></label>
  </labels></task></meta>
  <image id="0" name="a.png" subset="Train" width="40" height="30">
    <polygon label="tree" source="manual" occluded="0" points="{poly}" z_order="1"/>
    <box label="car" source="manual" occluded="0" xtl="5.5" ytl="4.2" xbr="25.1" ybr="20.9"
         z_order="0"/>
    <mask label="car" source="manual" occluded="0" rle="{rle}" left="20" top="10" width="8"
          height="6" z_order="1"/>
    <polyline label="car" source="manual" occluded="0" points="0,0;10,10" z_order="5"/>
  </image>
  <image id="1" name="b.png" subset="Validation" width="40" height="30">
    <polygon label="car" source="manual" occluded="0" points="0,0;40,0;40,30" z_order="0"/>
  </image>
</annotations>
"""


def test_cvat_for_images_xml_polygons_boxes_and_masks_by_z_order(tmp_path):
    root = tmp_path / "export"
    poly = [(10.0, 2.0), (35.5, 8.0), (30.0, 28.0), (12.0, 22.5)]
    blob = np.zeros((6, 8), np.uint8)
    blob[1:5, 2:7] = 1
    blob[0, 0] = 1
    points = ";".join(f"{x},{y}" for x, y in poly)
    root.mkdir()
    (root / "annotations.xml").write_text(XML.format(poly=points, rle=_cvat_rle(blob)))
    _image(root / "images" / "Train" / "a.png", 30, 40, 0)
    _image(root / "images" / "Validation" / "b.png", 30, 40, 1)
    out = tmp_path / "dataset"
    result = import_export("cvat", [root], out, progress=False)
    assert result.classes == ["car", "tree"]
    assert result.splits == {"train": 1, "validation": 1}
    assert result.notes == ["left out 1 polylines/points/ellipses/cuboids/skeletons"]

    def rasterise(xy):  # pycocotools' polygon rasteriser, as CVAT's own mask export uses
        return mask_utils.decode(mask_utils.frPyObjects([list(np.ravel(xy))], 30, 40)[0])

    expected = np.full((30, 40), 255, np.uint8)
    expected[rasterise([(5.5, 4.2), (25.1, 4.2), (25.1, 20.9), (5.5, 20.9)]) == 1] = 0  # z 0
    expected[rasterise(poly) == 1] = 1  # z 1, first in the file
    box = expected[10:16, 20:28]
    box[blob == 1] = 0  # z 1, after the polygon: on top
    got = np.asarray(Image.open(out / "masks" / "train" / "a.png"))
    np.testing.assert_array_equal(got, expected)
    assert got[11, 22] == 0 and got[15, 30] == 1
    b = np.asarray(Image.open(out / "masks" / "validation" / "b.png"))
    assert b[0, 39] == 0 and b[29, 0] == 255

    result = import_export("cvat", [root], tmp_path / "bg", background="background",
                           progress=False)  # fmt: skip
    assert result.classes == ["background", "car", "tree"]
    got = np.asarray(Image.open(tmp_path / "bg" / "masks" / "validation" / "b.png"))
    assert got[29, 0] == 0 and got[0, 39] == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("35.5,8.0", "45.5,8.0"), r"image id 0 'a\.png': <polygon> 0 \('tree'\): .*\(45\.5, 8\)"),
        (('label="tree"', 'label="bush"'), r"image id 0 'a\.png': <polygon> 0 has label 'bush'"),
        (('left="20"', 'left="35"'), r"<mask> 2 \('car'\): mask box 8x6 at \(35, 10\) is outside"),
        (('name="b.png"', 'name="zz.png"'), r"image id 1 'zz\.png': image 'zz\.png' not found"),
        (("0,0;40,0;40,30", "0,0;40,0"), r"image id 1 'b\.png': <polygon> 0 .*has 2 points"),
    ],
)
def test_bad_xml_names_the_file_image_and_shape(tmp_path, change, message):
    root = tmp_path / "export"
    root.mkdir()
    blob = np.ones((6, 8), np.uint8)
    xml = XML.format(poly="10,2;35.5,8.0;30,28", rle=_cvat_rle(blob)).replace(*change)
    (root / "annotations.xml").write_text(xml)
    _image(root / "images" / "a.png", 30, 40, 0)
    _image(root / "images" / "b.png", 30, 40, 1)
    with pytest.raises(AnnotationError, match=message) as info:
        import_export("cvat", [root], tmp_path / "out", progress=False)
    assert str(root / "annotations.xml") in str(info.value)


def test_not_a_cvat_export(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(AnnotationError, match=r"neither annotations\.xml"):
        import_export("cvat", [tmp_path / "x"], tmp_path / "out", progress=False)


FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "cvat"


def test_three_cvat_exports_written_by_datumaro_give_the_same_masks(tmp_path):
    """The same annotations exported as CVAT does it (datumaro, tests/fixtures/cvat): the
    colour PNGs CVAT's own pipeline rasterised, and the XML and COCO 1.0 polygons and boxes
    atrous rasterises, agree pixel for pixel, overlaps and z_order included."""
    masks = import_export("cvat", [FIXTURES / "segmentation_mask_1.1"], tmp_path / "m",
                          progress=False)  # fmt: skip
    xml = import_export("cvat", [FIXTURES / "cvat_for_images_1.1"], tmp_path / "x",
                        background="background", progress=False)  # fmt: skip
    coco = import_export("coco", [FIXTURES / "coco_1.0"], tmp_path / "c",
                         background="background", progress=False)  # fmt: skip
    assert coco.notes == ["3 annotations without segmentation painted as their bbox"]
    assert coco.classes == ["background", "car", "tree", "road"]  # category ids 1, 2, 3
    assert masks.classes == ["background", "car", "road", "tree"]  # labelmap.txt's order
    assert xml.classes == ["background", "car", "tree", "road"]  # <meta>'s order
    assert masks.splits == xml.splits == {"train": 2, "val": 1}

    def names(result, ids: np.ndarray) -> np.ndarray:
        """Class names of a mask's ids (the two files number the classes differently)."""
        lut = [*result.classes, *["?"] * (255 - len(result.classes)), "ignore"]
        return np.array(lut, dtype=object)[ids]

    for split, name in (("train", "img_0"), ("train", "img_1"), ("val", "img_2")):
        m = np.asarray(Image.open(tmp_path / "m" / "masks" / split / f"{name}.png"))
        x = np.asarray(Image.open(tmp_path / "x" / "masks" / split / f"{name}.png"))
        c = np.asarray(Image.open(tmp_path / "c" / "masks" / split / f"{name}.png"))
        np.testing.assert_array_equal(names(masks, m), names(xml, x))
        np.testing.assert_array_equal(names(masks, m), names(coco, c))
        assert set(names(masks, m).ravel()) == {"background", "car", "road", "tree"}
