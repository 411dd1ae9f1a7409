import shutil

import numpy as np
import pytest
import yaml
from cityscapesscripts.helpers.labels import trainId2label
from PIL import Image

from atrous.data import (
    DatasetError,
    get_dataset_records,
    get_metadata,
    list_datasets,
    register_dataset,
)
from atrous.data.mapper import load_sem_seg


@pytest.fixture
def datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("ATROUS_DATASETS", str(tmp_path))
    return tmp_path


@pytest.fixture
def synthetic_copy(synthetic_cityscapes_root, datasets):
    shutil.copytree(synthetic_cityscapes_root, datasets / "synthetic")
    return datasets / "synthetic"


def test_builtin_names_and_cityscapes_metadata_from_cityscapesscripts():
    names = list_datasets()
    for name in [
        "cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val",
        "cityscapes_fine_sem_seg_test", "ade20k_sem_seg_train", "ade20k_sem_seg_val",
        "voc_2012_sem_seg_train", "voc_2012_sem_seg_val", "synthetic_sem_seg_train",
        "synthetic_sem_seg_val",
    ]:  # fmt: skip
        assert name in names
    meta = get_metadata("cityscapes_fine_sem_seg_val")
    assert meta.num_classes == 19 and meta.ignore_label == 255
    assert meta.evaluator_type == "cityscapes_sem_seg"
    for i in range(19):
        assert meta.stuff_classes[i] == trainId2label[i].name
        assert meta.stuff_colors[i] == tuple(trainId2label[i].color)
    syn = get_metadata("synthetic_sem_seg_train")
    assert syn.stuff_classes == meta.stuff_classes and syn.evaluator_type == "cityscapes_sem_seg"
    assert get_metadata("ade20k_sem_seg_val").num_classes == 150
    assert get_metadata("voc_2012_sem_seg_train").num_classes == 21


def test_synthetic_records(synthetic_copy):
    records = get_dataset_records("synthetic_sem_seg_val")
    assert len(records) == 4
    r = records[0]
    assert r["file_name"].endswith("_leftImg8bit.png")
    assert r["sem_seg_file_name"].endswith("_gtFine_labelTrainIds.png")
    assert (r["height"], r["width"]) == (128, 256)
    meta = get_metadata("synthetic_sem_seg_val")
    assert meta.gt_dir == str(synthetic_copy / "gtFine" / "val")


def test_missing_root_and_empty_split(datasets):
    with pytest.raises(DatasetError, match=r"cityscapes.*does not exist.*cityscapes-dataset\.com"):
        get_dataset_records("cityscapes_fine_sem_seg_train")
    with pytest.raises(DatasetError, match="atrous prepare synthetic"):
        get_dataset_records("synthetic_sem_seg_train")
    (datasets / "cityscapes" / "leftImg8bit" / "val" / "aachen").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"holds no .*_leftImg8bit\.png images"):
        get_dataset_records("cityscapes_fine_sem_seg_val")


def test_missing_train_ids_point_to_prepare(synthetic_copy, datasets):
    shutil.copytree(synthetic_copy, datasets / "cityscapes")
    for f in (datasets / "cityscapes" / "gtFine" / "val").glob("*/*_labelTrainIds.png"):
        f.unlink()
    with pytest.raises(DatasetError, match=r"(?s)4 of 4 images.*atrous prepare cityscapes --root"):
        get_dataset_records("cityscapes_fine_sem_seg_val")


def test_image_without_label(synthetic_copy):
    gt = sorted((synthetic_copy / "gtFine" / "train").glob("*/*"))
    stem = gt[0].name.split("_gtFine_")[0]
    for f in gt:
        if f.name.startswith(stem):
            f.unlink()
    with pytest.raises(DatasetError, match=rf"1 of 8 images .*{stem}_leftImg8bit\.png"):
        get_dataset_records("synthetic_sem_seg_train")


def test_register_dataset_and_errors(synthetic_cityscapes_root):
    records = get_dataset_records_from(synthetic_cityscapes_root)
    register_dataset(
        "my_streets", lambda: records, stuff_classes=[f"c{i}" for i in range(19)], overwrite=True
    )
    assert len(get_dataset_records("my_streets")) == len(records)
    meta = get_metadata("my_streets")
    assert meta.evaluator_type == "sem_seg" and len(meta.stuff_colors) == 19
    with pytest.raises(DatasetError, match="already registered"):
        register_dataset("my_streets", records, stuff_classes=["a"])
    with pytest.raises(DatasetError, match="colours for"):
        register_dataset("bad", records, stuff_classes=["a", "b"], stuff_colors=[[0, 0, 0]])
    with pytest.raises(DatasetError, match=r"unknown dataset 'nope'.*register_dataset"):
        get_dataset_records("nope")


def get_dataset_records_from(root):
    from atrous.data.datasets.cityscapes import load_cityscapes_semantic

    return load_cityscapes_semantic(
        root / "leftImg8bit" / "train", root / "gtFine" / "train", how_to_get=""
    )


def _write_pair(image_path, mask_path, mask, mode=None):
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    h, w = mask.shape
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(image_path)
    Image.fromarray(mask, mode=mode).save(mask_path)


def test_ade20k_layout_and_label_shift(datasets):
    root = datasets / "ADEChallengeData2016"
    mask = np.array([[0, 1, 150], [2, 0, 3]], np.uint8)
    _write_pair(
        root / "images/validation/ADE_val_1.jpg",
        root / "annotations/validation/ADE_val_1.png",
        mask,
    )
    records = get_dataset_records("ade20k_sem_seg_val")
    assert len(records) == 1
    np.testing.assert_array_equal(
        load_sem_seg(records[0]), np.array([[255, 0, 149], [1, 255, 2]], np.uint8)
    )


def test_voc_palette_labels_and_border(datasets):
    root = datasets / "VOCdevkit" / "VOC2012"
    mask = np.array([[0, 15, 255], [20, 1, 255]], np.uint8)
    image, label = root / "JPEGImages/2007_000032.jpg", root / "SegmentationClass/2007_000032.png"
    _write_pair(image, label, mask)
    pal = Image.open(label).convert("P")
    Image.fromarray(mask, mode="L").convert("P").save(label)  # a palette PNG like VOC's
    del pal
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000032\n")
    records = get_dataset_records("voc_2012_sem_seg_val")
    np.testing.assert_array_equal(load_sem_seg(records[0]), mask)
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000099\n")
    with pytest.raises(DatasetError, match=r"2007_000099\.jpg.*train\.txt.*does not exist"):
        get_dataset_records("voc_2012_sem_seg_train")


@pytest.fixture
def user_dataset(tmp_path):
    mask = np.array([[0, 128, 200], [7, 0, 128]], np.uint8)
    for split in ("train", "val"):
        for i in range(2):
            _write_pair(
                tmp_path / f"images/{split}/sub/im{i}.jpg",
                tmp_path / f"masks/{split}/sub/im{i}.png",
                mask,
            )
    (tmp_path / "val.txt").write_text("images/val/sub/im0.jpg masks/val/sub/im0.png\n")
    spec = {
        "classes": ["background", "crack", "rust"],
        "ignore_value": 7,
        "colors": [[0, 0, 0], [255, 0, 0], [0, 200, 0]],
        "label_map": {0: 0, 128: 1, 200: 2},
        "image_ext": ".jpg",
        "splits": {
            "train": {"images": "images/train", "masks": "masks/train"},
            "val": {"list": "val.txt"},
        },
    }
    path = tmp_path / "cracks.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, spec


def test_yaml_dataset(user_dataset):
    path, _ = user_dataset
    train = get_dataset_records(f"{path}:train")
    val = get_dataset_records(f"{path}:val")
    assert len(train) == 2 and len(val) == 1
    np.testing.assert_array_equal(load_sem_seg(train[0]), [[0, 1, 2], [255, 0, 1]])
    meta = get_metadata(f"{path}:val")
    assert meta.stuff_classes == ("background", "crack", "rust")
    assert meta.stuff_colors[1] == (255, 0, 0) and meta.ignore_label == 255
    with pytest.raises(DatasetError, match=r"defines splits \['train', 'val'\]; name one"):
        get_dataset_records(str(path))
    with pytest.raises(DatasetError, match="has no split 'test'"):
        get_dataset_records(f"{path}:test")


@pytest.mark.parametrize("field", ["classes", "ignore_value", "splits"])
def test_yaml_missing_field_names_it(user_dataset, field):
    path, spec = user_dataset
    del spec[field]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(DatasetError, match=rf"cracks\.yaml: missing required field '{field}'"):
        get_metadata(f"{path}:train")


def test_yaml_bad_split_and_unpaired_image(user_dataset):
    path, spec = user_dataset
    spec["splits"]["train"] = {"images": "images/train"}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(DatasetError, match="split 'train' needs fields 'images' and 'masks'"):
        get_dataset_records(f"{path}:train")
    spec["splits"]["train"] = {"images": "images/train", "masks": "masks/train"}
    path.write_text(yaml.safe_dump(spec))
    (path.parent / "masks/train/sub/im1.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 images have no mask \(first: .*im1\.jpg"):
        get_dataset_records(f"{path}:train")
    spec["label_map"] = {5: 9}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(DatasetError, match="'label_map' maps 5 to 9"):
        get_metadata(f"{path}:val")
