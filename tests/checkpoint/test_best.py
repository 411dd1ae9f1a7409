"""`model_best.json`: read only when well-formed, and turned into a phrase on which weights a
tool took."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atrous.checkpoint.best import describe_weights, read_best_record

RECORD = {"metric": "sem_seg/mIoU", "mode": "max", "value": 71.234, "iteration": 5999,
          "file": "model_best.pth"}  # fmt: skip


def test_best_final_and_other_weights_are_described(tmp_path: Path) -> None:
    (tmp_path / "model_best.json").write_text(json.dumps(RECORD))
    assert describe_weights(tmp_path / "model_best.pth") == (
        f"{tmp_path / 'model_best.pth'} (the best evaluation of its run: sem_seg/mIoU 71.23 at "
        "iteration 5999)"
    )
    assert describe_weights(tmp_path / "model_final.pth") == (
        f"{tmp_path / 'model_final.pth'} (the final weights; the best evaluation, sem_seg/mIoU "
        "71.23 at iteration 5999, is model_best.pth)"
    )
    assert describe_weights(tmp_path / "model_0000999.pth") == str(tmp_path / "model_0000999.pth")


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", json.dumps({"metric": "sem_seg/mIoU"})])
def test_a_damaged_record_is_no_record(tmp_path: Path, content: str) -> None:
    (tmp_path / "model_best.json").write_text(content)
    assert read_best_record(tmp_path) is None
    assert describe_weights(tmp_path / "model_best.pth") == str(tmp_path / "model_best.pth")
