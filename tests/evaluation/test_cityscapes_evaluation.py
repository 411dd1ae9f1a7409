"""The official Cityscapes evaluation: equal to the library's own run, both metric definitions."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling import args as library_args
from PIL import Image

from atrous.evaluation import CityscapesSemSegEvaluator, SemSegEvaluator
from atrous.evaluation.cityscapes import (
    cityscapes_prediction_name,
    evaluate_cityscapes_files,
    train_id_to_label_id_lut,
)

from .cityscapes_gt import CITYSCAPES_META, TRAIN_NAMES, make_cityscapes_gt, to_label_ids

# The official command-line program, run as its authors intended (environment variables point
# it at the data). Only numpy's removed `in1d` is restored, as numpy's own documentation
# defines it, so that the unmodified script can run at all under numpy 2.4.
_RUN_OFFICIAL = """
import numpy as np
if not hasattr(np, "in1d"):
    np.in1d = lambda a, b, assume_unique=False, invert=False: np.isin(
        a, b, assume_unique=assume_unique, invert=invert).ravel()
import runpy
runpy.run_module("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
                 run_name="__main__")
"""


def _run_evaluator(evaluator, items):
    evaluator.reset()
    for inp, logits in items:
        evaluator.process([inp], [{"sem_seg": torch.from_numpy(logits)}])
    return evaluator.evaluate()["sem_seg"]


@pytest.fixture
def cityscapes_data(tmp_path):
    return tmp_path / "cityscapes", make_cityscapes_gt(tmp_path / "cityscapes")


@pytest.mark.slow
def test_equals_the_official_program_on_the_same_files(tmp_path, cityscapes_data):
    root, items = cityscapes_data
    ev = CityscapesSemSegEvaluator(
        CITYSCAPES_META, output_dir=tmp_path / "ours", gt_dir=root / "gtFine" / "val"
    )
    ours = _run_evaluator(ev, items)

    results_dir = tmp_path / "official_predictions"
    results_dir.mkdir()
    for inp, logits in items:
        name = Path(inp["file_name"]).name
        Image.fromarray(to_label_ids(logits)).save(results_dir / name)
    export = tmp_path / "official_export"
    export.mkdir()
    env = dict(
        os.environ,
        CITYSCAPES_DATASET=str(root),
        CITYSCAPES_RESULTS=str(results_dir),
        CITYSCAPES_EXPORT_DIR=str(export),
    )
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_OFFICIAL], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    official = json.loads((export / "resultPixelLevelSemanticLabeling.json").read_text())

    assert ours["IoU"] == 100 * official["averageScoreClasses"]
    assert ours["iIoU"] == 100 * official["averageScoreInstClasses"]
    assert ours["IoU_sup"] == 100 * official["averageScoreCategories"]
    assert ours["iIoU_sup"] == 100 * official["averageScoreInstCategories"]
    assert not math.isnan(ours["iIoU"]) and 0 < ours["iIoU"] < 100
    saved = json.loads((tmp_path / "ours" / "cityscapes_evaluation.json").read_text())
    assert saved["confMatrix"] == official["confMatrix"]
    for name in TRAIN_NAMES:
        assert saved["classScores"][name] == pytest.approx(official["classScores"][name])


def test_absent_classes_under_both_definitions(cityscapes_data):
    root, items = cityscapes_data
    official = _run_evaluator(
        CityscapesSemSegEvaluator(CITYSCAPES_META, gt_dir=root / "gtFine" / "val"), items
    )
    d2 = _run_evaluator(SemSegEvaluator(CITYSCAPES_META), items)
    # The official per-class scores, from the same files through the library.
    gt_files = sorted(str(p) for p in (root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    pred_dir = root / "preds"
    pred_dir.mkdir()
    for inp, logits in items:
        Image.fromarray(to_label_ids(logits)).save(pred_dir / Path(inp["file_name"]).name)
    result = evaluate_cityscapes_files(pred_dir, gt_files)
    scores = result["classScores"]

    # "train" is predicted on every image but never in the ground truth.
    assert scores["train"] == 0.0
    assert math.isnan(d2["IoU-train"]) and math.isnan(d2["ACC-train"])
    # Classes in the ground truth have the same IoU under both definitions.
    for name in ("road", "sky", "building", "car", "person", "vegetation", "sidewalk"):
        assert d2[f"IoU-{name}"] == pytest.approx(100 * scores[name]), name
    # detectron2 averages over classes in the ground truth; the script over all classes
    # that were predicted or present, counting the absent-but-predicted ones as 0.
    present = ["road", "sidewalk", "building", "vegetation", "sky", "person", "car"]
    assert d2["mIoU"] == pytest.approx(np.mean([d2[f"IoU-{n}"] for n in present]))
    scored = [v for v in scores.values() if not math.isnan(v)]
    assert official["IoU"] == pytest.approx(100 * np.mean(scored))
    assert official["IoU"] < d2["mIoU"]


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_iiou_matches_hand_computation(tmp_path):
    # one image: road everywhere, one car instance of 20 pixels; the prediction finds 12 of
    # them and calls 4 road pixels "car" (false positives)
    gt = np.full((10, 10), 7, dtype=np.uint8)
    gt[2:6, 2:7] = 26
    inst = gt.astype(np.uint16)
    inst[2:6, 2:7] = 26001
    pred = np.full((10, 10), 7, dtype=np.uint8)
    pred[2:5, 2:6] = 26  # 12 true positives
    pred[8, 0:4] = 26  # 4 false positives on road
    _write(tmp_path / "gt" / "ulm_000001_000002_gtFine_labelIds.png", gt)
    _write(tmp_path / "gt" / "ulm_000001_000002_gtFine_instanceIds.png", inst)
    _write(tmp_path / "pred" / "ulm_000001_000002_pred.png", pred)
    result = evaluate_cityscapes_files(
        tmp_path / "pred", [str(tmp_path / "gt" / "ulm_000001_000002_gtFine_labelIds.png")]
    )
    weight = library_args.avgClassSize["car"] / 20
    tp_w, fn_w, fp = 12 * weight, 8 * weight, 4
    expected = tp_w / (tp_w + fp + fn_w)
    assert result["classInstScores"]["car"] == pytest.approx(expected)
    assert result["averageScoreInstClasses"] == pytest.approx(expected)  # only car is scored
    assert result["categoryInstScores"]["vehicle"] == pytest.approx(expected)
    assert result["classScores"]["car"] == pytest.approx(12 / (12 + 4 + 8))
    assert result["classScores"]["road"] == pytest.approx((80 - 4) / (80 + 8))


def test_without_instance_files_iiou_is_nan(cityscapes_data):
    root, items = cityscapes_data
    for f in (root / "gtFine" / "val").glob("*/*_instanceIds.png"):
        f.unlink()
    res = _run_evaluator(
        CityscapesSemSegEvaluator(CITYSCAPES_META, gt_dir=root / "gtFine" / "val"), items
    )
    assert math.isnan(res["iIoU"]) and math.isnan(res["iIoU_sup"])
    assert 0 < res["IoU"] < 100 and 0 < res["IoU_sup"] < 100


def test_ground_truth_found_from_label_train_ids_path(cityscapes_data):
    root, items = cityscapes_data
    with_dir = _run_evaluator(
        CityscapesSemSegEvaluator(CITYSCAPES_META, gt_dir=root / "gtFine" / "val"), items
    )
    from_records = _run_evaluator(CityscapesSemSegEvaluator(CITYSCAPES_META), items)
    assert with_dir == from_records


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not an evaluated Cityscapes label"):
        train_id_to_label_id_lut(["road", "parking"])
    with pytest.raises(ValueError, match="not an evaluated Cityscapes label"):
        CityscapesSemSegEvaluator(SimpleNamespace(name="x", stuff_classes=["cat", "dog"]))
    with pytest.raises(ValueError, match="not a Cityscapes file name"):
        cityscapes_prediction_name("holiday.jpg")
    assert (
        cityscapes_prediction_name("a/frankfurt_000000_000294_leftImg8bit.png", "labelIds")
        == "frankfurt_000000_000294_leftImg8bit_labelIds.png"
    )
    gt = tmp_path / "gt" / "ulm_000001_000002_gtFine_labelIds.png"
    _write(gt, np.full((4, 4), 7, dtype=np.uint8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="Found no prediction"):
        evaluate_cityscapes_files(tmp_path / "empty", [str(gt)], instance_level=False)
    lut = train_id_to_label_id_lut(TRAIN_NAMES)
    assert lut.tolist() == [
        7,
        8,
        11,
        12,
        13,
        17,
        19,
        20,
        21,
        22,
        23,
        24,
        25,
        26,
        27,
        28,
        31,
        32,
        33,
    ]


def test_ground_truth_bomb_is_refused_before_the_library_decodes_it(tmp_path):
    from atrous.data import ImageTooLargeError
    from tests.data.bombs import bomb_png

    gt = tmp_path / "gt" / "ulm_000001_000002_gtFine_labelIds.png"
    gt.parent.mkdir()
    bomb_png(gt, 20000, 20000, colour_type=0)
    (tmp_path / "pred").mkdir()
    _write(tmp_path / "pred" / "ulm_000001_000002_pred.png", np.full((4, 4), 7, np.uint8))
    with pytest.raises(ImageTooLargeError, match=r"INPUT\.MAX_IMAGE_PIXELS") as info:
        evaluate_cityscapes_files(tmp_path / "pred", [str(gt)], instance_level=False)
    assert str(info.value).startswith(f"{gt}: the image is 20000 x 20000")
    _write(gt, np.full((4, 4), 7, dtype=np.uint8))
    with pytest.raises(ImageTooLargeError, match="16 pixels, more than the limit of 15"):
        evaluate_cityscapes_files(
            tmp_path / "pred", [str(gt)], instance_level=False, max_image_pixels=15
        )
    result = evaluate_cityscapes_files(
        tmp_path / "pred", [str(gt)], instance_level=False, max_image_pixels=16
    )
    assert result["classScores"]["road"] == 1.0


def test_check_inputs_rejects_names_the_script_cannot_match_before_inference(tmp_path):
    from atrous.data.errors import DatasetError

    gt_dir = tmp_path / "gtFine" / "val"
    ev = CityscapesSemSegEvaluator(CITYSCAPES_META, gt_dir=gt_dir)
    good = {"file_name": str(tmp_path / "lindau" / "lindau_000000_000019_leftImg8bit.png")}
    ev.check_inputs([good])
    umlaut = {"file_name": str(tmp_path / "münchen" / "münchen_000000_000019_leftImg8bit.png")}
    with pytest.raises(DatasetError, match=r"münchen_000000_000019_leftImg8bit\.png: .*ASCII"):
        ev.check_inputs([good, umlaut])
    holiday = {"file_name": str(tmp_path / "holiday.png")}
    with pytest.raises(DatasetError, match=r"cannot score .*holiday\.png"):
        ev.check_inputs([holiday])
