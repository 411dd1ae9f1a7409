"""A run's claim on OUTPUT_DIR: previous runs are refused, resumed or moved aside, never deleted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from atrous.engine.output_dir import (
    PREVIOUS_DIR,
    check_checkpoint_space,
    checkpoint_size_estimate,
    prepare_output_dir,
    previous_run_files,
    release_output_dir,
)
from atrous.utils.folders import LOCK_NAME, OutputDirError, OutputDirLock


@pytest.fixture(autouse=True)
def _release():
    yield
    release_output_dir()


@pytest.fixture
def used(tmp_path: Path) -> Path:
    """A folder a training run left: checkpoints, metrics, log, an evaluation."""
    out = tmp_path / "run"
    (out / "inference" / "val").mkdir(parents=True)
    for name, text in {
        "model_0000999.pth": "ckpt 999",
        "model_final.pth": "final",
        "last_checkpoint": "model_final.pth",
        "metrics.json": '{"iteration": 0}\n',
        "log.txt": "old log\n",
        "config.yaml": "OLD: 1\n",
        "inference/val/report.html": "<html>",
    }.items():
        (out / name).write_text(text)
    return out


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): p.read_text()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def test_fresh_run_in_a_used_folder_is_refused_and_nothing_changes(used: Path) -> None:
    before = _tree(used)
    with pytest.raises(OutputDirError) as info:
        prepare_output_dir(used)
    message = str(info.value)
    assert str(used) in message and "holds a previous run" in message
    assert "last_checkpoint" in message and "metrics.json" in message and "2 model_*.pth" in message
    assert "--resume" in message and "--overwrite" in message and "nothing is deleted" in message
    assert _tree(used) == before
    # The refusal did not leave the folder locked.
    assert not (used / LOCK_NAME).exists()
    with OutputDirLock(used):
        pass


def test_overwrite_moves_the_previous_run_inside_output_dir(used: Path) -> None:
    before = _tree(used)
    notes = prepare_output_dir(used, overwrite=True)
    moved = [p for p in (used / PREVIOUS_DIR).iterdir()]
    assert len(moved) == 1 and str(moved[0]) in notes[0]
    assert _tree(moved[0]) == before  # every file kept, byte for byte
    assert sorted(os.listdir(used)) == sorted([LOCK_NAME, PREVIOUS_DIR])
    assert previous_run_files(used) == []
    release_output_dir(used)
    # A second --overwrite keeps the first one's files too.
    (used / "metrics.json").write_text("{}\n")
    prepare_output_dir(used, overwrite=True)
    assert len(list((used / PREVIOUS_DIR).iterdir())) == 2


def test_resume_and_eval_only_keep_the_previous_run(used: Path) -> None:
    before = _tree(used)
    assert prepare_output_dir(used, resume=True) == []
    release_output_dir(used)
    assert prepare_output_dir(used, eval_only=True) == []
    assert _tree(used) == before


def test_contradictory_flags_are_refused(used: Path) -> None:
    with pytest.raises(OutputDirError, match="--resume and --overwrite contradict"):
        prepare_output_dir(used, resume=True, overwrite=True)
    with pytest.raises(OutputDirError, match="--overwrite has no effect with --eval-only"):
        prepare_output_dir(used, eval_only=True, overwrite=True)


def test_lock_is_held_until_released_and_reentrant_in_one_process(tmp_path: Path) -> None:
    out = tmp_path / "fresh"
    prepare_output_dir(out, command="first")
    prepare_output_dir(out)  # the same process again (a notebook): no refusal
    assert (out / LOCK_NAME).exists()
    with pytest.raises(OutputDirError, match=rf"PID {os.getpid()} .*command: first"):
        OutputDirLock(out).acquire()  # anyone else is refused
    release_output_dir(out)
    assert not (out / LOCK_NAME).exists()


def test_checkpoint_size_estimate_matches_a_saved_checkpoint(tmp_path: Path) -> None:
    from atrous.checkpoint import Checkpointer

    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.BatchNorm1d(256))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 256)).sum().backward()
    optimizer.step()  # creates the momentum buffers
    path = Checkpointer(model, save_dir=tmp_path, optimizer=optimizer).save("model_0000000")
    estimate = checkpoint_size_estimate(model, optimizer)
    assert 0.9 * path.stat().st_size <= estimate <= 1.1 * path.stat().st_size
    adam = torch.optim.AdamW(model.parameters())
    assert checkpoint_size_estimate(model, adam) > estimate
    check_checkpoint_space(tmp_path, model, optimizer)  # a test machine has room for 0.5 MB
