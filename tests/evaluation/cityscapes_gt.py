"""Generated Cityscapes-layout ground truth (labelIds, instanceIds, labelTrainIds) for tests."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
from cityscapesscripts.helpers.labels import id2label, trainId2label
from PIL import Image

TRAIN_NAMES = [trainId2label[t].name for t in range(19)]
CITYSCAPES_META = SimpleNamespace(
    name="cityscapes_toy",
    stuff_classes=TRAIN_NAMES,
    stuff_colors=[trainId2label[t].color for t in range(19)],
    ignore_label=255,
)

# labelId -> trainId (255 for labels not evaluated)
ID_TO_TRAIN = np.full(256, 255, dtype=np.uint8)
for _id, _label in id2label.items():
    if _id >= 0 and 0 <= _label.trainId < 19:
        ID_TO_TRAIN[_id] = _label.trainId


def _label_image(rng: np.random.Generator, h: int, w: int, index: int):
    """A street-like labelIds image with person/car instances, void areas and parking."""
    label = np.full((h, w), 7, dtype=np.uint8)  # road
    label[: h // 3] = 23  # sky
    label[h // 3 : h // 2] = 11  # building
    label[h // 2 : h // 2 + 3, :] = 8  # sidewalk
    label[:, : w // 8] = 21  # vegetation
    label[-3:, :] = 1  # ego vehicle (void)
    label[h // 2 + 4 : h // 2 + 7, w // 2 : w // 2 + 6] = 9  # parking (ignored in eval)
    inst = label.astype(np.int32).copy()
    for k in range(2 + index % 2):
        y, x = int(rng.integers(h // 2, h - 10)), int(rng.integers(w // 8, w - 12))
        label[y : y + 6, x : x + 9] = 26  # car
        inst[y : y + 6, x : x + 9] = 26000 + k
    y, x = int(rng.integers(h // 3, h // 2)), int(rng.integers(w // 8, w - 5))
    label[y : y + 8, x : x + 3] = 24  # person
    inst[y : y + 8, x : x + 3] = 24000
    return label, inst


def make_cityscapes_gt(root: Path, *, num_images: int = 4, size=(48, 64), seed: int = 0):
    """Write gtFine/val/<city>/ files and return (input dict, logits (19, H, W)) per image.

    The logits favour the true trainId but are noisy, and predict "train" (trainId 16) on a
    patch of every image although no train exists in the ground truth.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    items = []
    for i in range(num_images):
        city = ["aachen", "bochum"][i % 2]
        prefix = f"{city}_{i:06d}_{19 + i:06d}"
        gt_dir = Path(root) / "gtFine" / "val" / city
        gt_dir.mkdir(parents=True, exist_ok=True)
        label, inst = _label_image(rng, h, w, i)
        Image.fromarray(label).save(gt_dir / f"{prefix}_gtFine_labelIds.png")
        Image.fromarray(inst.astype(np.uint16)).save(gt_dir / f"{prefix}_gtFine_instanceIds.png")
        train = ID_TO_TRAIN[label]
        Image.fromarray(train).save(gt_dir / f"{prefix}_gtFine_labelTrainIds.png")
        logits = rng.normal(size=(19, h, w)).astype(np.float32)
        target = np.where(train == 255, 0, train)
        logits[target, np.arange(h)[:, None], np.arange(w)] += 1.5
        logits[16, 2:6, 10:20] += 10.0
        inp = {
            "file_name": str(
                Path(root) / "leftImg8bit" / "val" / city / f"{prefix}_leftImg8bit.png"
            ),
            "sem_seg_file_name": str(gt_dir / f"{prefix}_gtFine_labelTrainIds.png"),
            "height": h,
            "width": w,
        }
        items.append((inp, logits))
    return items


def to_label_ids(logits: np.ndarray) -> np.ndarray:
    """Argmax trainIds converted to labelIds with cityscapesscripts' table, for reference runs."""
    pred = logits.argmax(axis=0)
    out = np.zeros(pred.shape, dtype=np.uint8)
    for t in range(19):
        out[pred == t] = trainId2label[t].id
    return out
