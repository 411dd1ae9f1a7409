"""SemSegEvaluator against hand-computed confusion matrices and a boundary reference."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.evaluation import SemSegEvaluator, mask_to_boundary, metrics_from_confusion
from atrous.evaluation.sem_seg import accumulate_confusion

META = SimpleNamespace(
    name="toy", stuff_classes=["a", "b", "c"], stuff_colors=None, ignore_label=255
)

# Hand-worked example (pred, gt) per pixel; class "c" is predicted but absent from the ground
# truth, and two pixels are ignored.
GT = np.array([[0, 0, 1, 255], [0, 1, 1, 255]], dtype=np.uint8)
PRED = np.array([[0, 2, 1, 2], [0, 0, 1, 1]], dtype=np.int64)
# conf[pred, gt], last index = ignore
CONF = np.array(
    [
        [2, 1, 0, 0],
        [0, 2, 0, 1],
        [1, 0, 0, 1],
        [0, 0, 0, 0],
    ]
)


def _one_hot_logits(pred: np.ndarray, num_classes: int) -> torch.Tensor:
    logits = torch.zeros(num_classes, *pred.shape)
    logits.scatter_(0, torch.from_numpy(pred)[None], 5.0)
    return logits


def _write_gt(path, gt: np.ndarray) -> str:
    Image.fromarray(gt.astype(np.uint8)).save(path)
    return str(path)


def test_accumulate_confusion_matches_hand_count():
    conf = torch.zeros(4, 4, dtype=torch.int64)
    gt = torch.from_numpy(np.where(GT == 255, 3, GT).astype(np.int64))
    accumulate_confusion(conf, torch.from_numpy(PRED), gt, 3)
    np.testing.assert_array_equal(conf.numpy(), CONF)


def test_metrics_match_hand_computation():
    res = metrics_from_confusion(CONF, ["a", "b", "c"])
    # a: tp 2, gt 3, pred 3 -> IoU 2/4; b: tp 2, gt 3, pred 2 -> IoU 2/3; c: no ground truth
    assert res["IoU-a"] == pytest.approx(50.0)
    assert res["IoU-b"] == pytest.approx(200 / 3)
    assert math.isnan(res["IoU-c"]) and math.isnan(res["ACC-c"])
    assert res["mIoU"] == pytest.approx((50.0 + 200 / 3) / 2)
    assert res["fwIoU"] == pytest.approx(0.5 * 50.0 + 0.5 * 200 / 3)
    assert res["ACC-a"] == pytest.approx(200 / 3) and res["ACC-b"] == pytest.approx(200 / 3)
    assert res["mACC"] == pytest.approx(200 / 3)
    assert res["pACC"] == pytest.approx(400 / 6)
    assert list(res)[:3] == ["mIoU", "fwIoU", "IoU-a"]


def test_fwiou_weights_by_ground_truth_frequency():
    # a: 6 gt pixels, all right; b: 2 gt pixels, 1 right, 1 predicted as a
    conf = np.zeros((3, 3), dtype=np.int64)
    conf[0, 0], conf[1, 1], conf[0, 1] = 6, 1, 1
    res = metrics_from_confusion(conf, ["a", "b"])
    iou_a, iou_b = 6 / 7, 1 / 2
    assert res["fwIoU"] == pytest.approx(100 * (6 / 8 * iou_a + 2 / 8 * iou_b))
    assert res["mIoU"] == pytest.approx(100 * (iou_a + iou_b) / 2)


def test_evaluator_reads_ground_truth_files_and_writes_outputs(tmp_path):
    gt_file = _write_gt(tmp_path / "gt.png", GT)
    ev = SemSegEvaluator(META, output_dir=tmp_path / "out", distributed=False, write_report=False)
    ev.reset()
    inputs = [{"file_name": "img.png", "sem_seg_file_name": gt_file, "height": 2, "width": 4}]
    ev.process(inputs, [{"sem_seg": _one_hot_logits(PRED, 3)}])
    res = ev.evaluate()["sem_seg"]
    expected = metrics_from_confusion(CONF, ["a", "b", "c"])
    for key in ("mIoU", "fwIoU", "mACC", "pACC", "IoU-a", "IoU-b", "ACC-a"):
        assert res[key] == pytest.approx(expected[key])
    saved = json.loads((tmp_path / "out" / "sem_seg_evaluation.json").read_text())
    assert saved["metrics"]["IoU-c"] is None  # NaN is written as null
    assert saved["metrics"]["mIoU"] == pytest.approx(expected["mIoU"])
    rows = list(csv.DictReader((tmp_path / "out" / "sem_seg_per_class.csv").open()))
    assert [r["class"] for r in rows] == ["a", "b", "c"]
    assert float(rows[0]["IoU"]) == pytest.approx(50.0) and rows[2]["IoU"] == ""
    assert rows[2]["pred_pixels"] == "1" and rows[2]["gt_pixels"] == "0"
    conf = json.loads((tmp_path / "out" / "sem_seg_confusion_matrix.json").read_text())
    np.testing.assert_array_equal(np.array(conf["matrix"]), CONF)


def test_ground_truth_from_records_and_from_input_tensor(tmp_path):
    gt_file = _write_gt(tmp_path / "gt.png", GT)
    records = [{"file_name": "img.png", "sem_seg_file_name": gt_file}]
    ev = SemSegEvaluator(META, distributed=False, records=records)
    ev.process(
        [{"file_name": "img.png", "height": 2, "width": 4}], [{"sem_seg": _one_hot_logits(PRED, 3)}]
    )
    ev2 = SemSegEvaluator(META, distributed=False)
    ev2.process(
        [{"sem_seg": torch.from_numpy(GT.astype(np.int64)), "height": 2, "width": 4}],
        [{"sem_seg": _one_hot_logits(PRED, 3)}],
    )
    a, b = ev.evaluate()["sem_seg"], ev2.evaluate()["sem_seg"]
    assert a["mIoU"] == pytest.approx(b["mIoU"]) == pytest.approx((50.0 + 200 / 3) / 2)


def test_accumulates_over_images_and_reset_clears(tmp_path):
    gt_file = _write_gt(tmp_path / "gt.png", GT)
    ev = SemSegEvaluator(META, distributed=False)
    inp = [{"file_name": "x", "sem_seg_file_name": gt_file}]
    for _ in range(3):
        ev.process(inp, [{"sem_seg": _one_hot_logits(PRED, 3)}])
    assert ev._conf.sum().item() == 3 * GT.size
    np.testing.assert_array_equal(ev._conf.numpy(), 3 * CONF)
    ev.reset()
    ev.process(inp, [{"sem_seg": _one_hot_logits(PRED, 3)}])
    np.testing.assert_array_equal(ev._conf.numpy(), CONF)


def test_bad_ground_truth_is_reported_with_the_file_name(tmp_path):
    bad = _write_gt(tmp_path / "labelIds.png", np.array([[0, 26]], dtype=np.uint8))
    ev = SemSegEvaluator(META, distributed=False)
    with pytest.raises(ValueError, match=r"labelIds\.png.*\[26\]"):
        ev.process([{"sem_seg_file_name": bad}], [{"sem_seg": torch.zeros(3, 1, 2)}])
    wrong_size = _write_gt(tmp_path / "small.png", np.zeros((1, 1), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"small\.png.*\(1, 1\).*\(1, 2\)"):
        ev.process([{"sem_seg_file_name": wrong_size}], [{"sem_seg": torch.zeros(3, 1, 2)}])
    Image.new("RGB", (2, 1)).save(tmp_path / "color.png")
    with pytest.raises(ValueError, match=r"color\.png.*single-channel"):
        ev.process(
            [{"sem_seg_file_name": str(tmp_path / "color.png")}],
            [{"sem_seg": torch.zeros(3, 1, 2)}],
        )
    with pytest.raises(ValueError, match=r"missing\.png: file not found"):
        ev.process(
            [{"sem_seg_file_name": str(tmp_path / "missing.png")}],
            [{"sem_seg": torch.zeros(3, 1, 2)}],
        )


def test_ground_truth_goes_through_the_datasets_label_mapping(tmp_path):
    # ADE20K-style storage: 0 is "unlabelled", class k is stored as k + 1.
    gt_file = _write_gt(tmp_path / "ade.png", np.where(GT == 255, 0, GT + 1))
    lut = np.arange(256, dtype=np.uint8) - 1
    lut[0] = 255
    records = [{"file_name": "img.png", "sem_seg_file_name": gt_file, "sem_seg_lut": lut}]
    from_records = SemSegEvaluator(META, distributed=False, records=records)
    from_records.process([{"file_name": "img.png"}], [{"sem_seg": _one_hot_logits(PRED, 3)}])
    # Mapper outputs carry the record's label file and mapping themselves.
    from_input = SemSegEvaluator(META, distributed=False)
    from_input.process(
        [{"file_name": "img.png", "sem_seg_file_name": gt_file, "sem_seg_lut": lut}],
        [{"sem_seg": _one_hot_logits(PRED, 3)}],
    )
    for ev in (from_records, from_input):
        np.testing.assert_array_equal(ev._conf.numpy(), CONF)


def test_num_classes_must_match_metadata():
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        SemSegEvaluator(META, num_classes=19)


def _boundary_reference(mask: np.ndarray, ratio: float) -> np.ndarray:
    """Boundary map from its definition: label minus the minimum over a (2d+1) square, with the
    image surrounded by one ring of zeros (outside that ring nothing counts)."""
    h, w = mask.shape
    d = max(1, round(ratio * math.hypot(h, w)))
    padded = np.zeros((h + 2, w + 2), dtype=np.int64)
    padded[1:-1, 1:-1] = mask
    big = np.full((h + 2 + 2 * d, w + 2 + 2 * d), 10**6, dtype=np.int64)
    big[d:-d, d:-d] = padded
    eroded = np.full_like(padded, 10**6)
    for dy in range(2 * d + 1):
        for dx in range(2 * d + 1):
            eroded = np.minimum(eroded, big[dy : dy + h + 2, dx : dx + w + 2])
    return (mask - eroded[1:-1, 1:-1]).astype(np.uint8)


@pytest.mark.parametrize("shape,ratio", [((7, 9), 0.02), ((40, 50), 0.05), ((30, 20), 0.1)])
def test_mask_to_boundary_matches_definition(shape, ratio):
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 5, size=shape).astype(np.uint8)
    mask[5:, 4:] = 3  # a large region whose interior is not boundary
    np.testing.assert_array_equal(mask_to_boundary(mask, ratio), _boundary_reference(mask, ratio))


def test_boundary_iou_matches_reference_computation(tmp_path):
    rng = np.random.default_rng(1)
    gt = np.zeros((60, 80), dtype=np.uint8)
    gt[10:50, 20:70] = 1
    gt[30:40, 30:40] = 2
    gt[0:5, :] = 255
    pred = gt.astype(np.int64).copy()
    pred[pred == 255] = 0
    pred[12:20, 20:40] = 2
    pred[rng.random(pred.shape) < 0.05] = 0
    gt_file = _write_gt(tmp_path / "gt.png", gt)
    ev = SemSegEvaluator(META, distributed=False)
    ev.process([{"sem_seg_file_name": gt_file}], [{"sem_seg": _one_hot_logits(pred, 3)}])
    res = ev.evaluate()["sem_seg"]
    gt_c = np.where(gt == 255, 3, gt).astype(np.uint8)
    b_gt = _boundary_reference(gt_c, 0.02).astype(np.int64)
    b_pred = _boundary_reference(pred.astype(np.uint8), 0.02).astype(np.int64)
    b_conf = np.bincount(4 * b_pred.ravel() + b_gt.ravel(), minlength=16).reshape(4, 4)
    for c, name in enumerate("abc"):
        tp = b_conf[c, c]
        union = b_conf[:3, c].sum() + b_conf[c, :3].sum() - tp
        expected = 100 * tp / union if union else math.nan
        assert res[f"BoundaryIoU-{name}"] == pytest.approx(expected, nan_ok=True)
        assert res[f"min(IoU, B-Iou)-{name}"] == pytest.approx(
            min(res[f"IoU-{name}"], res[f"BoundaryIoU-{name}"]), nan_ok=True
        )


def test_ground_truth_bomb_is_refused_from_its_header(tmp_path):
    from atrous.data import ImageTooLargeError
    from tests.data.bombs import bomb_png

    bomb = str(bomb_png(tmp_path / "gt.png", 20000, 20000, colour_type=0))
    ev = SemSegEvaluator(META, distributed=False, write_report=False)
    inputs = [{"file_name": "img.png", "sem_seg_file_name": bomb, "height": 2, "width": 4}]
    with pytest.raises(ImageTooLargeError) as info:
        ev.process(inputs, [{"sem_seg": _one_hot_logits(PRED, 3)}])
    assert str(info.value).startswith(f"{bomb}: the image is 20000 x 20000 = 400,000,000")
    assert "(INPUT.MAX_IMAGE_PIXELS)" in str(info.value)
    # the budget is the evaluator's: 8 pixels pass, 7 do not, 0 means no limit
    gt_file = _write_gt(tmp_path / "small.png", GT)
    inputs = [{**inputs[0], "sem_seg_file_name": gt_file}]
    for budget in (8, 0):
        ev = SemSegEvaluator(META, distributed=False, write_report=False, max_image_pixels=budget)
        ev.process(inputs, [{"sem_seg": _one_hot_logits(PRED, 3)}])
    ev = SemSegEvaluator(META, distributed=False, write_report=False, max_image_pixels=7)
    with pytest.raises(ImageTooLargeError, match=r"small\.png: the image is 4 x 2 = 8 pixels"):
        ev.process(inputs, [{"sem_seg": _one_hot_logits(PRED, 3)}])


def test_records_are_listed_only_when_an_input_needs_them(tmp_path):
    gt_file = _write_gt(tmp_path / "gt.png", GT)
    calls = []

    def list_records():
        calls.append(1)
        return [{"file_name": "img.png", "sem_seg_file_name": gt_file}]

    ev = SemSegEvaluator(META, distributed=False, write_report=False, records=list_records)
    ev.process(
        [{"file_name": "other.png", "sem_seg_file_name": gt_file, "height": 2, "width": 4}],
        [{"sem_seg": _one_hot_logits(PRED, 3)}],
    )
    assert calls == []  # the input named its label file
    for _ in range(2):
        ev.process(
            [{"file_name": "img.png", "height": 2, "width": 4}],
            [{"sem_seg": _one_hot_logits(PRED, 3)}],
        )
    assert calls == [1]
    assert ev.evaluate()["sem_seg"]["mIoU"] == pytest.approx((50.0 + 200 / 3) / 2)


def test_a_dataset_name_is_not_looked_up_behind_the_callers_back():
    with pytest.raises(TypeError, match="build_evaluator"):
        SemSegEvaluator("cityscapes_fine_sem_seg_val")
