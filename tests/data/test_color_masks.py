"""Colour-coded masks (``mask_format: rgb``): decoding, its errors, and YAML/registered datasets.

Training and evaluation read labels through one function (`load_sem_seg`), so a dataset of
colour-coded masks must give exactly what the same labels stored as class ids give.
"""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from atrous.data import (
    ColorCoding,
    DatasetError,
    UnknownColorError,
    get_dataset_records,
    get_metadata,
    load_sem_seg,
    read_label,
    register_dataset,
)
from atrous.data.datasets.custom import load_dataset_yaml

COLORS = [(0, 0, 0), (255, 0, 0), (0, 200, 0)]
IGNORE = (255, 255, 255)


def _ids(seed: int, shape=(64, 64)) -> np.ndarray:
    """A label map of classes 0..2 in blocks, plus a few ignored (255) pixels."""
    rng = np.random.RandomState(seed)
    ids = np.kron(rng.randint(0, 3, (shape[0] // 8, shape[1] // 8)), np.ones((8, 8), np.uint8))
    ids = ids.astype(np.uint8)
    ids[rng.rand(*shape) < 0.05] = 255
    return ids


def _to_rgb(ids: np.ndarray) -> np.ndarray:
    table = np.array([*COLORS] + [IGNORE] * (256 - len(COLORS)), dtype=np.uint8)
    return table[ids]


def _write_pair_sets(root, n: int = 4):
    """Images with both an id mask and a colour-coded mask of the same labels."""
    for split, first in (("train", 0), ("val", 100)):
        for sub in ("images", "ids", "rgb"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            ids = _ids(first + i)
            rng = np.random.RandomState(first + i)
            # Images that tell the classes apart, so that a short training learns something.
            image = _to_rgb(np.where(ids == 255, 0, ids)) * 0.6 + rng.randint(0, 100, (64, 64, 3))
            Image.fromarray(image.astype(np.uint8)).save(root / "images" / split / f"{i}.png")
            Image.fromarray(ids).save(root / "ids" / split / f"{i}.png")
            Image.fromarray(_to_rgb(ids)).save(root / "rgb" / split / f"{i}.png")


def _yaml(root, name: str, masks: str, **extra) -> str:
    spec = {
        "classes": ["bg", "red", "green"],
        "splits": {s: {"images": f"images/{s}", "masks": f"{masks}/{s}"} for s in ("train", "val")},
        **extra,
    }
    path = root / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _rgb_yaml(root, **extra) -> str:
    return _yaml(root, "rgb.yaml", "rgb", mask_format="rgb", colors=[list(c) for c in COLORS],
                 ignore_colors=[list(IGNORE)], **extra)  # fmt: skip


def test_decode_is_a_lookup_of_every_pixel():
    ids = _ids(0)
    coding = ColorCoding(colors=COLORS, ignore_colors=(IGNORE,))
    assert np.array_equal(coding.decode(_to_rgb(ids)), ids)
    assert coding.decode(_to_rgb(ids)).dtype == np.uint8


def test_an_unlisted_colour_names_the_file_the_colour_and_its_pixels(tmp_path):
    rgb = _to_rgb(_ids(0))
    rgb[:2, :5] = (10, 20, 30)  # 10 pixels
    rgb[5, 5] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    coding = ColorCoding(colors=COLORS, ignore_colors=(IGNORE,))
    with pytest.raises(UnknownColorError) as info:
        read_label(tmp_path / "m.png", color_coding=coding)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'm.png'}: 2 colour(s) are not in the dataset's")
    assert "[10, 20, 30] on 10 pixels, [1, 2, 3] on 1 pixels" in message
    assert "'unknown_colors: ignore'" in message
    assert info.value.colors == {(10, 20, 30): 10, (1, 2, 3): 1}
    copy = pickle.loads(pickle.dumps(info.value))  # as a worker process hands it on
    assert str(copy) == message and copy.colors == info.value.colors

    lenient = ColorCoding(colors=COLORS, ignore_colors=(IGNORE,), unknown_colors="ignore")
    label = read_label(tmp_path / "m.png", color_coding=lenient)
    expected = _ids(0)
    expected[:2, :5] = 255
    expected[5, 5] = 255
    assert np.array_equal(label, expected)


def test_rgba_and_palette_colour_masks_decode_like_rgb(tmp_path):
    ids = _ids(1)
    rgb = _to_rgb(ids)
    alpha = np.full((*ids.shape, 1), 255, np.uint8)
    alpha[0, 0] = 0  # the alpha channel is dropped, whatever it holds
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(tmp_path / "rgba.png")
    # A palette whose indices are NOT the classes (no index equals its class): only the
    # colours may count. Colour number 3 is the ignore colour.
    colours = [*COLORS, IGNORE]
    perm = np.array([2, 3, 0, 1], np.uint8)  # colour number -> palette index
    pal = Image.fromarray(perm[np.where(ids == 255, 3, ids)], "P")
    flat = [0] * 768
    for number, index in enumerate(perm):
        flat[3 * index : 3 * index + 3] = colours[number]
    pal.putpalette(flat)
    pal.save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    coding = ColorCoding(colors=COLORS, ignore_colors=(IGNORE,))
    for name in ("rgba.png", "pal.png"):
        assert np.array_equal(read_label(tmp_path / name, color_coding=coding), ids), name


def test_voc_style_palette_masks_keep_reading_their_indices(tmp_path):
    ids = _ids(2)
    pal = Image.fromarray(ids, "P")
    pal.putpalette([v for i in range(256) for v in ((i * 40) % 256, 0, 255 - i)])
    pal.save(tmp_path / "voc.png")
    _write_pair_sets(tmp_path, n=1)
    Image.open(tmp_path / "voc.png").save(tmp_path / "ids" / "val" / "0.png")
    path = _yaml(tmp_path, "ids.yaml", "ids", ignore_value=255)
    (record,) = get_dataset_records(f"{path}:val")
    assert np.array_equal(load_sem_seg(record), ids)


def test_id_masks_read_as_colour_images_get_an_error_pointing_to_mask_format(tmp_path):
    _write_pair_sets(tmp_path, n=1)
    path = _yaml(tmp_path, "wrong.yaml", "rgb", ignore_value=255)
    (record,) = get_dataset_records(f"{path}:val")
    with pytest.raises(DatasetError, match="set 'mask_format: rgb' and one RGB triple per class"):
        load_sem_seg(record)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"colors": None}, "'mask_format: rgb' needs field 'colors'"),
        ({"colors": [[0, 0, 0], [255, 0, 0]]}, "field 'colors' has 2 entries for 3 classes"),
        ({"colors": [[0, 0, 0], [255, 0, 0], [0, 0, 0]]}, r"colour \[0, 0, 0\] is given for "
         "class 0 and for class 2"),
        ({"ignore_colors": [[255, 0, 0]]}, r"colour \[255, 0, 0\] is given for class 1 and for "
         "an ignore colour"),
        ({"ignore_value": 255}, "field 'ignore_value' describes stored mask values"),
        ({"label_map": {1: 2}}, "field 'label_map' describes stored mask values"),
        ({"unknown_colors": "skip"}, "field 'unknown_colors' is 'skip'; use 'error'"),
        ({"mask_format": "rgba"}, "field 'mask_format' is 'rgba'; use 'ids'"),
    ],
)  # fmt: skip
def test_bad_colour_fields_are_errors_naming_the_field(tmp_path, extra, message):
    _write_pair_sets(tmp_path, n=1)
    spec = {"mask_format": "rgb", "colors": [list(c) for c in COLORS], **extra}
    spec = {k: v for k, v in spec.items() if v is not None}
    path = _yaml(tmp_path, "bad.yaml", "rgb", **spec)
    with pytest.raises(DatasetError, match=message):
        load_dataset_yaml(path)


def test_colour_fields_without_mask_format_rgb_are_refused(tmp_path):
    _write_pair_sets(tmp_path, n=1)
    path = _yaml(tmp_path, "ids.yaml", "ids", ignore_value=255, unknown_colors="ignore")
    with pytest.raises(DatasetError, match=re.escape("add 'mask_format: rgb'")):
        load_dataset_yaml(path)


def test_yaml_and_registered_colour_datasets_give_the_id_labels(tmp_path):
    _write_pair_sets(tmp_path, n=2)
    ids_records = get_dataset_records(_yaml(tmp_path, "ids.yaml", "ids", ignore_value=255) + ":val")
    rgb_records = get_dataset_records(_rgb_yaml(tmp_path) + ":val")
    register_dataset(
        "test_colour_masks_registered",
        [{"file_name": r["file_name"], "sem_seg_file_name": r["sem_seg_file_name"]}
         for r in rgb_records],
        stuff_classes=["bg", "red", "green"],
        color_coding=ColorCoding(colors=COLORS, ignore_colors=(IGNORE,)),
        overwrite=True,
    )  # fmt: skip
    registered = get_dataset_records("test_colour_masks_registered")
    for a, b, c in zip(ids_records, rgb_records, registered, strict=True):
        expected = load_sem_seg(a)
        assert np.array_equal(load_sem_seg(b), expected)
        assert np.array_equal(load_sem_seg(c), expected)


def test_register_dataset_colour_coding_must_fit_the_classes():
    coding = ColorCoding(colors=COLORS, ignore_colors=(IGNORE,))
    with pytest.raises(DatasetError, match="3 colours for 2 classes"):
        register_dataset("x_rgb", [], stuff_classes=["a", "b"], color_coding=coding, overwrite=True)
    with pytest.raises(DatasetError, match="stuff_colors differ from the colours of color_coding"):
        register_dataset("x_rgb", [], stuff_classes=["a", "b", "c"], stuff_colors=COLORS[::-1],
                         color_coding=coding, overwrite=True)  # fmt: skip
    with pytest.raises(DatasetError, match="leave ignore_label at 255"):
        register_dataset("x_rgb", [], stuff_classes=["a", "b", "c"], ignore_label=0,
                         color_coding=coding, overwrite=True)  # fmt: skip
    register_dataset("x_rgb", [], stuff_classes=["a", "b", "c"], color_coding=coding,
                     overwrite=True)  # fmt: skip
    assert get_metadata("x_rgb").stuff_colors == tuple(COLORS)


@pytest.mark.slow
def test_rgb_dataset_trains_and_evaluates_exactly_like_its_id_masks(tmp_path, monkeypatch):
    """A short training plus evaluation on each form of the same labels: identical numbers."""
    from atrous.config import get_cfg
    from atrous.engine import Trainer
    from tests.helpers import QUICKSTART, TINY

    _write_pair_sets(tmp_path, n=4)
    results = {}
    for form, path in (
        ("ids", _yaml(tmp_path, "ids.yaml", "ids", ignore_value=255)),
        ("rgb", _rgb_yaml(tmp_path)),
    ):
        cfg = get_cfg()
        cfg.merge_from_file(str(QUICKSTART))
        cfg.merge_from_list([*TINY, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "0",
                             "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3",
                             "DATASETS.TRAIN", f"('{path}:train',)",
                             "DATASETS.TEST", f"('{path}:val',)",
                             "OUTPUT_DIR", str(tmp_path / form)])  # fmt: skip
        torch.manual_seed(0)  # the same initial weights for both
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        metrics = Trainer.test(cfg, trainer.model)["sem_seg"]
        weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        results[form] = (metrics, weights)
    (m_ids, w_ids), (m_rgb, w_rgb) = results["ids"], results["rgb"]
    assert m_ids == m_rgb
    assert not np.isnan(m_ids["mIoU"])
    assert w_ids.keys() == w_rgb.keys()
    assert all(torch.equal(w_ids[k], w_rgb[k]) for k in w_ids)


def test_yaml_unknown_colors_ignore_makes_unlisted_colours_unlabelled(tmp_path):
    _write_pair_sets(tmp_path, n=1)
    mask = tmp_path / "rgb" / "val" / "0.png"
    rgb = np.array(Image.open(mask))
    rgb[3, :7] = (12, 34, 56)
    Image.fromarray(rgb).save(mask)
    expected = _ids(100)
    expected[3, :7] = 255

    (strict,) = get_dataset_records(_rgb_yaml(tmp_path) + ":val")
    with pytest.raises(UnknownColorError, match=r"\[12, 34, 56\] on 7 pixels"):
        load_sem_seg(strict)
    (lenient,) = get_dataset_records(_rgb_yaml(tmp_path, unknown_colors="ignore") + ":val")
    assert np.array_equal(load_sem_seg(lenient), expected)
