"""What the trackers are sent: the config as flat text parameters, metric names MLflow takes."""

from __future__ import annotations

from atrous.config import get_cfg
from atrous.engine.tracking import config_params
from atrous.engine.tracking_backends import mlflow_metric_name


def test_config_becomes_flat_text_parameters() -> None:
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.BASE_LR", "0.02", "DATASETS.TEST", "('a', 'b')"])
    params = config_params(cfg)
    assert params["SOLVER.BASE_LR"] == "0.02"
    assert params["DATASETS.TEST"] == "['a', 'b']"
    assert params["TRACKING.BACKENDS"] == "['tensorboard']"
    assert all(isinstance(v, str) and len(v) <= 6000 for v in params.values())
    assert not any(isinstance(v, dict) for v in params.values())


def test_metric_names_keep_what_mlflow_accepts() -> None:
    assert mlflow_metric_name("sem_seg/mIoU") == "sem_seg/mIoU"
    assert mlflow_metric_name("sem_seg/IoU-traffic light") == "sem_seg/IoU-traffic light"
    assert mlflow_metric_name("sem_seg/min(IoU, B-Iou)-road") == "sem_seg/min_IoU_ B-Iou_-road"
