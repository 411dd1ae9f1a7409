import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from atrous.config import get_cfg
from atrous.data import (
    DatasetError,
    DatasetMapper,
    ImageTooLargeError,
    build_mapper,
    build_train_loader,
    get_dataset_records,
)
from atrous.data.errors import ImageReadError
from atrous.data.transforms import (
    RandomCropCategoryAreaConstraint,
    RandomFlip,
    ResizeShortestEdge,
)
from tests.data.bombs import bomb_png


@pytest.fixture
def records(synthetic_cityscapes_root, monkeypatch):
    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent))
    return get_dataset_records("synthetic_sem_seg_train")


def _cfg(**crop):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 19, "INPUT.MIN_SIZE_TRAIN", (128, 192)])
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = 1024
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (64, 96)
    return cfg


def test_train_output_format(records):
    cfg = _cfg()
    for fmt in ("RGB", "BGR"):
        cfg.INPUT.FORMAT = fmt
        out = build_mapper(cfg, is_train=True)(records[0], np.random.RandomState(0))
        assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 64, 96)
        assert out["image"].is_contiguous()
        assert out["sem_seg"].dtype == torch.int64 and out["sem_seg"].shape == (64, 96)
        assert (out["height"], out["width"]) == (128, 256)  # the file's size, before resizing
        assert out["file_name"] == records[0]["file_name"]
        assert set(out["sem_seg"].unique().tolist()) <= set(range(19)) | {255}
        if fmt == "RGB":
            rgb = out["image"]
        else:
            torch.testing.assert_close(out["image"], rgb.flip(0))


def test_test_mapper_resizes_like_detectron2_and_keeps_original_size(records):
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 1000
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 19
    out = build_mapper(cfg, is_train=False)(records[0])
    assert out["image"].shape == (3, 64, 128) and out["sem_seg"].shape == (64, 128)
    assert (out["height"], out["width"]) == (128, 256)
    cfg.INPUT.MIN_SIZE_TEST = 0
    out = build_mapper(cfg, is_train=False)(records[0])
    assert out["image"].shape == (3, 128, 256)
    image = np.asarray(Image.open(records[0]["file_name"]).convert("RGB"))
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), image[:, :, ::-1])


def test_fused_and_reference_pipelines_agree(records):
    augs = [
        ResizeShortestEdge(short_edge_length=(96, 160, 256), max_size=1024, sample_style="choice")
    ]
    augs += [
        RandomCropCategoryAreaConstraint(
            crop_type="absolute",
            crop_size=(64, 128),
            single_category_max_area=0.6,
            ignored_category=255,
        ),
        RandomFlip(),
    ]
    fast = DatasetMapper(augmentations=augs, image_format="BGR", num_classes=19)
    slow = DatasetMapper(augmentations=augs, image_format="BGR", num_classes=19, fused=False)
    for i, r in enumerate(records):
        a, b = fast(r, np.random.RandomState(i)), slow(r, np.random.RandomState(i))
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["sem_seg"], b["sem_seg"])


@pytest.fixture
def broken(records, tmp_path):
    def copy(i):
        r = dict(records[i])
        for key in ("file_name", "sem_seg_file_name"):
            dst = tmp_path / f"{i}_{key}.png"
            shutil.copy(r[key], dst)
            r[key] = str(dst)
        return r

    return copy


def _mapper():
    return DatasetMapper(augmentations=[], image_format="RGB", num_classes=19)


def test_label_size_mismatch(broken):
    r = broken(0)
    label = np.asarray(Image.open(r["sem_seg_file_name"]))
    Image.fromarray(label[:-1]).save(r["sem_seg_file_name"])
    with pytest.raises(
        DatasetError,
        match=r"label .*0_sem_seg_file_name\.png is 127x256 but its image .* is 128x256",
    ):
        _mapper()(r)


def test_label_values_outside_classes(broken):
    r = broken(1)
    label = np.asarray(Image.open(r["sem_seg_file_name"])).copy()
    label[0, :3] = (19, 40, 40)
    Image.fromarray(label).save(r["sem_seg_file_name"])
    with pytest.raises(
        DatasetError,
        match=r"1_sem_seg_file_name\.png: label values 19, 40 are neither a class \(0\.\.18\)",
    ):
        _mapper()(r)


def test_truncated_image(broken):
    r = broken(2)
    path = Path(r["file_name"])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(ImageReadError, match=r"2_file_name\.png: cannot decode the image"):
        _mapper()(r)


def test_lut_is_applied(broken):
    r = broken(3)
    lut = np.arange(65536, dtype=np.uint16)
    lut[:19] = np.arange(19)[::-1]
    r["sem_seg_lut"] = lut
    out = _mapper()(r)
    raw = np.asarray(Image.open(r["sem_seg_file_name"])).astype(np.int64)
    expected = np.where(raw < 19, 18 - raw, raw)
    np.testing.assert_array_equal(out["sem_seg"].numpy(), expected)
    # Carried along so that evaluators read ground truth with the same mapping.
    assert out["sem_seg_lut"] is lut


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    h=st.integers(4, 48),
    w=st.integers(4, 48),
    short=st.lists(st.integers(2, 120), min_size=1, max_size=3),
    crop=st.tuples(st.integers(1, 60), st.integers(1, 60)),
    seed=st.integers(0, 2**16),
)
def test_fuzz_lazy_png_decoding_matches_reference(tmp_path, h, w, short, crop, seed):
    rng = np.random.RandomState(seed)
    image = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
    label = rng.randint(0, 4, (h, w)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "im.png")
    Image.fromarray(label).save(tmp_path / "lab.png")
    record = {"file_name": str(tmp_path / "im.png"), "sem_seg_file_name": str(tmp_path / "lab.png")}
    augs = [
        ResizeShortestEdge(short_edge_length=tuple(short), max_size=400, sample_style="choice"),
        RandomCropCategoryAreaConstraint(
            crop_type="absolute", crop_size=crop, ignored_category=255
        ),
        RandomFlip(),
    ]
    for fmt in ("RGB", "BGR"):
        fast = DatasetMapper(augmentations=augs, image_format=fmt, num_classes=4)
        slow = DatasetMapper(augmentations=augs, image_format=fmt, num_classes=4, fused=False)
        a, b = fast(record, np.random.RandomState(seed)), slow(record, np.random.RandomState(seed))
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["sem_seg"], b["sem_seg"])
        assert a["image"].shape[1:] == crop


def test_mapper_honours_the_pixel_budget_of_the_config(records, tmp_path):
    # The synthetic images and labels are 128 x 256 = 32768 pixels.
    cfg = _cfg()
    for limit in (32768, 0, -1):
        cfg.INPUT.MAX_IMAGE_PIXELS = limit
        for is_train in (True, False):
            assert build_mapper(cfg, is_train=is_train)(records[0])["sem_seg"].numel() > 0
    cfg.INPUT.MAX_IMAGE_PIXELS = 32767
    for is_train in (True, False):
        with pytest.raises(ImageTooLargeError, match=r"INPUT\.MAX_IMAGE_PIXELS") as info:
            build_mapper(cfg, is_train=is_train)(records[0])
        assert str(info.value).startswith(f"{records[0]['file_name']}: the image is 256 x 128")
    # a label larger than the budget is refused too, before it is compared with its image
    mapper = DatasetMapper(
        augmentations=[], image_format="RGB", num_classes=19, max_image_pixels=32768
    )
    big_label = bomb_png(tmp_path / "x.png", 300, 200, colour_type=0)
    with pytest.raises(ImageTooLargeError, match=r"x\.png: the image is 300 x 200 = 60,000"):
        mapper({**records[0], "sem_seg_file_name": str(big_label)})


def test_training_loader_refuses_a_bomb_in_the_dataset(
    synthetic_cityscapes_root, tmp_path, monkeypatch
):
    root = tmp_path / "synthetic"
    shutil.copytree(synthetic_cityscapes_root, root)
    monkeypatch.setenv("ATROUS_DATASETS", str(tmp_path))
    bomb = sorted((root / "leftImg8bit" / "train").rglob("*.png"))[3]
    bomb_png(bomb, 20000, 20000)  # 1.2 GB of pixels in a 1 MB file, where a photo was
    cfg = _cfg()
    cfg.DATASETS.TRAIN = ("synthetic_sem_seg_train",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 8  # the first batch holds every image
    loader = build_train_loader(cfg)
    with pytest.raises(ImageTooLargeError) as info:
        next(iter(loader))
    message = str(info.value)
    assert message.startswith(f"{bomb}: the image is 20000 x 20000 = 400,000,000 pixels")
    assert "limit of 89,478,485 pixels (INPUT.MAX_IMAGE_PIXELS)" in message


@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_map_image_is_the_record_mapping_of_the_same_pixels(records, fmt):
    """The predictor's in-memory path and the test loader's file path give the same input."""
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 1000
    cfg.INPUT.FORMAT = fmt
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 19
    mapper = build_mapper(cfg, is_train=False)
    from_file = mapper({"file_name": records[0]["file_name"]})
    rgb = np.asarray(Image.open(records[0]["file_name"]).convert("RGB"))
    from_array = mapper.map_image(rgb)
    assert set(from_array) == {"image", "height", "width"}
    assert (from_array["height"], from_array["width"]) == (128, 256)
    assert from_array["image"].shape == (3, 96, 192) and from_array["image"].is_contiguous()
    torch.testing.assert_close(from_array["image"], from_file["image"], rtol=0, atol=0)
