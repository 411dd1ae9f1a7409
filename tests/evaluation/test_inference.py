"""inference_on_dataset + build_evaluator on the generated Cityscapes-layout dataset."""

from __future__ import annotations

import json
import math
import weakref

import pytest
import torch

from atrous.checkpoint import Checkpointer
from atrous.data import build_test_loader
from atrous.evaluation import (
    CityscapesSemSegEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
    build_evaluator,
    evaluate_datasets,
    inference_on_dataset,
)
from atrous.inference import Predictor, build_inference_model
from atrous.modeling import build_model


@pytest.fixture
def cfg(synthetic_eval_cfg):
    return synthetic_eval_cfg


def _model(cfg):
    model = build_model(cfg)
    Checkpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


def test_evaluates_with_both_metric_definitions_and_writes_the_report(cfg, tmp_path):
    model = _model(cfg).train()  # as the trainer would hand it over mid-training
    evaluator = build_evaluator(cfg, "synthetic_sem_seg_val", tmp_path / "eval")
    assert isinstance(evaluator, DatasetEvaluators)
    assert [type(e) for e in evaluator.evaluators] == [CityscapesSemSegEvaluator, SemSegEvaluator]
    loader = build_test_loader(cfg, "synthetic_sem_seg_val")
    results = inference_on_dataset(model, loader, evaluator)["sem_seg"]
    assert model.training  # the caller's mode is restored
    for key in ("IoU", "iIoU", "IoU_sup", "iIoU_sup", "mIoU", "fwIoU", "mACC", "pACC"):
        assert not math.isnan(results[key]), key
        assert 0 <= results[key] <= 100
    for name in ("sem_seg_evaluation.json", "sem_seg_per_class.csv", "report.html",
                 "cityscapes_evaluation.json", "report_files/iou_per_class.png"):  # fmt: skip
        assert (tmp_path / "eval" / name).is_file(), name


def test_predictor_and_wrappers_are_accepted(cfg):
    predictor = Predictor(cfg)
    loader = build_test_loader(cfg, "synthetic_sem_seg_val")
    plain = inference_on_dataset(predictor, loader, build_evaluator(cfg, "synthetic_sem_seg_val"))
    cfg = cfg.clone()
    cfg.TEST.SLIDING_WINDOW.ENABLED = True
    cfg.TEST.SLIDING_WINDOW.SIZE = (128, 256)  # covers the 128x256 images: identical results
    cfg.TEST.SLIDING_WINDOW.STRIDE = (64, 128)
    wrapped = build_inference_model(cfg, predictor.model)
    slid = inference_on_dataset(wrapped, loader, build_evaluator(cfg, "synthetic_sem_seg_val"))
    assert slid["sem_seg"].keys() == plain["sem_seg"].keys()
    for key, value in plain["sem_seg"].items():
        assert slid["sem_seg"][key] == pytest.approx(value, nan_ok=True, rel=0, abs=0), key


def test_class_count_mismatch_is_explained(cfg):
    cfg = cfg.clone()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        build_evaluator(cfg, "synthetic_sem_seg_val")


def test_evaluators_read_ground_truth_within_the_configured_budget(cfg):
    from atrous.data import ImageTooLargeError, get_dataset_records

    record = get_dataset_records("synthetic_sem_seg_val")[0]  # 128 x 256 = 32768 pixels
    inputs = [{"file_name": record["file_name"], "height": 128, "width": 256}]
    outputs = [{"sem_seg": torch.zeros(19, 128, 256)}]
    cfg = cfg.clone()
    for limit in (32768, 0):
        cfg.INPUT.MAX_IMAGE_PIXELS = limit
        build_evaluator(cfg, "synthetic_sem_seg_val").process(inputs, outputs)
    cfg.INPUT.MAX_IMAGE_PIXELS = 32767
    with pytest.raises(ImageTooLargeError, match=r"256 x 128 = 32,768 pixels") as info:
        build_evaluator(cfg, "synthetic_sem_seg_val").process(inputs, outputs)
    assert str(info.value).startswith(record["sem_seg_file_name"])


class _Recorder(torch.nn.Module):
    """A model that notes whether the previous batch's logits were still alive at each call."""

    def __init__(self):
        super().__init__()
        self.previous = None
        self.alive = []

    def forward(self, inputs):
        if self.previous is not None:
            self.alive.append(self.previous() is not None)
        logits = torch.zeros(3, 8, 8)
        self.previous = weakref.ref(logits)
        return [{"sem_seg": logits} for _ in inputs]


def test_a_batch_logits_are_freed_before_the_next_batch_runs():
    model = _Recorder()
    inference_on_dataset(model, [[{"image": torch.zeros(3, 8, 8)}]] * 3, None)
    assert model.alive == [False, False]  # the peak holds one batch of logits, not two


def test_the_builder_hands_each_evaluator_the_catalogs_metadata(cfg):
    from atrous.data import get_metadata

    meta = get_metadata("synthetic_sem_seg_val")
    evaluator = build_evaluator(cfg, "synthetic_sem_seg_val")
    parts = evaluator.evaluators if isinstance(evaluator, DatasetEvaluators) else [evaluator]
    assert parts and all(part.metadata == meta for part in parts)


def test_evaluate_datasets_scores_each_dataset_in_its_own_folder(cfg, tmp_path):
    model = _model(cfg).train()
    results = evaluate_datasets(cfg, model, ["synthetic_sem_seg_val"], tmp_path / "inference")
    assert list(results) == ["synthetic_sem_seg_val"]
    assert 0 <= results["synthetic_sem_seg_val"]["sem_seg"]["mIoU"] <= 100
    assert model.training  # the trainer evaluates mid-training and goes on
    assert (tmp_path / "inference" / "synthetic_sem_seg_val" / "report.html").is_file()


def test_evaluate_datasets_checks_every_dataset_before_any_inference(cfg, tmp_path):
    from atrous.data import DatasetError

    model = _model(cfg)
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(DatasetError, match="no_such_dataset"):
        evaluate_datasets(cfg, model, ["synthetic_sem_seg_val", "no_such_dataset"], tmp_path)
    assert calls == []  # the first dataset was not run only to fail on the second
    assert not (tmp_path / "synthetic_sem_seg_val" / "sem_seg_evaluation.json").exists()


def test_scoring_on_a_helper_thread_gives_the_serial_results(cfg, tmp_path):
    # What a GPU model gets by default: the evaluator scores batch i while batch i + 1 runs.
    model = _model(cfg)
    loader = build_test_loader(cfg, "synthetic_sem_seg_val")
    serial = inference_on_dataset(
        model, loader, build_evaluator(cfg, "synthetic_sem_seg_val", tmp_path / "a"), overlap=False
    )
    overlapped = inference_on_dataset(
        model, loader, build_evaluator(cfg, "synthetic_sem_seg_val", tmp_path / "b"), overlap=True
    )
    # (json: NaN, for a class absent from the ground truth, equals NaN there)
    assert json.dumps(overlapped, sort_keys=True) == json.dumps(serial, sort_keys=True)


def test_an_error_while_scoring_on_the_helper_thread_reaches_the_caller(cfg):
    class FailsOnThird(SemSegEvaluator):
        def process(self, inputs, outputs):
            self.seen = getattr(self, "seen", 0) + 1
            if self.seen == 3:
                raise ValueError("label file of the third image is broken")
            super().process(inputs, outputs)

    from atrous.data import get_metadata

    evaluator = FailsOnThird(get_metadata("synthetic_sem_seg_val"), write_report=False)
    loader = build_test_loader(cfg, "synthetic_sem_seg_val")
    with pytest.raises(ValueError, match="third image is broken"):
        inference_on_dataset(_model(cfg), loader, evaluator, overlap=True)
