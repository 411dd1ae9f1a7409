"""Fixtures shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import QUICKSTART, TINY


@pytest.fixture
def tiny_run_cfg(synthetic_cityscapes_root, monkeypatch):
    """Factory: the quickstart config shrunk to seconds, no evaluation, writing into `out`."""
    from atrous.config import get_cfg

    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent))

    def make(out: Path):
        cfg = get_cfg()
        cfg.merge_from_file(str(QUICKSTART))
        cfg.merge_from_list([*TINY, "DATASETS.TEST", "()", "OUTPUT_DIR", str(out)])
        return cfg

    return make
