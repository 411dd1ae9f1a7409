"""Fixtures of the evaluation tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def synthetic_eval_cfg(tiny_cfg, reference_dir, synthetic_cityscapes_root, monkeypatch):
    """The reference weights evaluated on the synthetic val split at its stored size."""
    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent))
    cfg = tiny_cfg.clone()
    cfg.MODEL.WEIGHTS = str(reference_dir / "small_v3plus.pkl")
    cfg.DATASETS.TEST = ("synthetic_sem_seg_val",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TEST = 0
    return cfg
