import json
import time

import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image

from atrous.data.datasets.synthetic import generate_dataset, generate_scene, render_scene


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_layout_is_cityscapes(synthetic_cityscapes_root):
    root = synthetic_cityscapes_root
    images = sorted((root / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))
    assert len(images) == 8
    assert len(list((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))) == 4
    for image in images:
        city = image.parent.name
        stem = image.name[: -len("_leftImg8bit.png")]
        assert stem.startswith(city + "_") and len(stem.split("_")) == 3
        gt = root / "gtFine" / "train" / city
        for suffix in ("polygons.json", "labelIds.png", "labelTrainIds.png", "instanceIds.png"):
            assert (gt / f"{stem}_gtFine_{suffix}").is_file()
        with Image.open(image) as im:
            assert im.size == (256, 128) and im.mode == "RGB"


def test_labels_match_cityscapesscripts_rasterisation(synthetic_cityscapes_root):
    gt_dir = synthetic_cityscapes_root / "gtFine" / "val"
    for polygons in sorted(gt_dir.glob("*/*_polygons.json")):
        annotation = Annotation()
        annotation.fromJsonFile(str(polygons))
        base = str(polygons)[: -len("_polygons.json")]
        for encoding, suffix in (("ids", "_labelIds.png"), ("trainIds", "_labelTrainIds.png")):
            expected = np.asarray(createLabelImage(annotation, encoding))
            written = np.asarray(Image.open(base + suffix))
            np.testing.assert_array_equal(written, expected)


def test_instance_ids_follow_cityscapes_encoding(synthetic_cityscapes_root):
    gt_dir = synthetic_cityscapes_root / "gtFine" / "train"
    for inst_file in sorted(gt_dir.glob("*/*_instanceIds.png"))[:3]:
        inst = np.asarray(Image.open(inst_file)).astype(np.int64)
        ids = np.asarray(Image.open(str(inst_file).replace("instanceIds", "labelIds")))
        label_of = np.where(inst >= 1000, inst // 1000, inst)
        np.testing.assert_array_equal(label_of, ids)


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = generate_dataset(tmp_path / "a", num_train=2, num_val=1, size=(64, 128), seed=5)
    b = generate_dataset(
        tmp_path / "b", num_train=2, num_val=1, size=(64, 128), seed=5, num_workers=2
    )
    c = generate_dataset(tmp_path / "c", num_train=2, num_val=1, size=(64, 128), seed=6)
    fa, fb = _files(a), _files(b)
    assert [p.relative_to(a) for p in fa] == [p.relative_to(b) for p in fb]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))
    images = [p for p in fa if p.name.endswith("leftImg8bit.png")]
    assert any(
        (a / p.relative_to(a)).read_bytes() != (c / p.relative_to(a)).read_bytes() for p in images
    )


def test_rerun_is_a_no_op_and_shrinking_removes_stale_images(tmp_path):
    root = generate_dataset(tmp_path / "s", num_train=3, num_val=1, size=(32, 64), seed=0)
    marker = json.loads((root / "synthetic_dataset.json").read_text())
    assert marker["num_train"] == 3
    mtimes = {p: p.stat().st_mtime_ns for p in _files(root)}
    generate_dataset(root, num_train=3, num_val=1, size=(32, 64), seed=0)
    assert {p: p.stat().st_mtime_ns for p in _files(root)} == mtimes
    generate_dataset(root, num_train=1, num_val=1, size=(32, 64), seed=0)
    assert len(list((root / "leftImg8bit" / "train").glob("*/*.png"))) == 1
    assert len(list((root / "gtFine" / "train").glob("*/*_polygons.json"))) == 1


def test_scenes_are_varied_and_learnable():
    """Many classes appear, every class has its own colour statistics, images differ."""
    means: dict[int, list] = {}
    seen = set()
    for i in range(12):
        rng = np.random.default_rng(i)
        out = render_scene(generate_scene(rng, 128, 256), rng)
        train = out["train_ids"]
        seen |= set(np.unique(train).tolist())
        for c in np.unique(train):
            if c != 255:
                means.setdefault(int(c), []).append(out["image"][train == c].mean(0))
    # road, sidewalk, building, pole, vegetation, terrain, sky and car always or nearly always
    assert {0, 1, 2, 5, 8, 9, 10, 13} <= seen
    sky, road, veg = (np.mean(means[c], 0) for c in (10, 0, 8))
    assert sky[2] > sky[0] + 20  # blue sky
    assert veg[1] > veg[2] + 15  # green vegetation
    assert abs(road[0] - road[2]) < 40  # grey road


def test_generation_is_fast():
    rng = np.random.default_rng(0)
    render_scene(generate_scene(rng, 256, 512), rng)  # warm-up
    start = time.perf_counter()
    for i in range(5):
        rng = np.random.default_rng(i)
        render_scene(generate_scene(rng, 256, 512), rng)
    per_image = (time.perf_counter() - start) / 5
    # ~0.02 s on an idle core; generous bound for a loaded shared machine
    assert per_image < 0.2
