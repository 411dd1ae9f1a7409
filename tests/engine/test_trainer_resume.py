"""`Trainer.resume_or_load` only moves a run forward: it resumes the newest intact checkpoint or
refuses, changes nothing in OUTPUT_DIR before the state is loaded and checked, and extends a run
along the schedule of the new SOLVER.MAX_ITER (real trainer, real files, hostile files made here).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml

from atrous.checkpoint.errors import CheckpointNotFoundError, CorruptCheckpointError
from atrous.config import ConfigError
from tests.helpers import UNUSABLE_LAST_CHECKPOINT, spoil_last_checkpoint


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.is_symlink() and p.name != "log.txt"
    }


@pytest.fixture
def finished(tmp_path: Path, tiny_run_cfg):
    """A finished 4-iteration run (checkpoints after iterations 1 and 3, model_final at 3)."""
    from atrous.engine import Trainer

    out = tmp_path / "run"
    trainer = Trainer(tiny_run_cfg(out))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return out


def _resume(cfg):
    from atrous.engine import Trainer

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    return trainer


@pytest.mark.parametrize("record", UNUSABLE_LAST_CHECKPOINT)
def test_unusable_last_checkpoint_resumes_the_newest_checkpoint_not_iteration_0(
    finished: Path,
    tiny_run_cfg,
    record: str,
    caplog,
) -> None:
    spoil_last_checkpoint(finished, record)
    before = _snapshot(finished)
    with caplog.at_level(logging.WARNING, logger="atrous"):
        trainer = _resume(tiny_run_cfg(finished))
    assert trainer.start_iter == 4  # model_final.pth records iteration 3
    assert _snapshot(finished).keys() >= before.keys()
    assert all(_snapshot(finished)[k] == v for k, v in before.items() if k != "config.yaml")
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "largest iteration (3)" in messages
    assert "root:" not in messages and len(messages) < 2000  # nothing of the record is quoted


def test_resume_skips_damaged_checkpoints_and_refuses_when_none_is_intact(
    finished: Path,
    tiny_run_cfg,
) -> None:
    (finished / "last_checkpoint").unlink()
    (finished / "model_final.pth").write_bytes(b"PK\x03\x04 cut short")
    (finished / "model_0000003.pth").write_bytes(b"\0" * 4096)
    assert _resume(tiny_run_cfg(finished)).start_iter == 2  # model_0000001.pth

    (finished / "model_0000001.pth").write_bytes(b"")
    before = _snapshot(finished)
    with pytest.raises(CheckpointNotFoundError) as info:
        _resume(tiny_run_cfg(finished))
    message = str(info.value)
    assert "none of its 3 .pth files is a readable training checkpoint" in message
    assert "model_0000001.pth" in message and "--overwrite" in message
    assert _snapshot(finished) == before


def test_checkpoint_with_a_negative_iteration_is_refused_before_anything_changes(
    finished: Path,
    tiny_run_cfg,
) -> None:
    path = finished / "model_final.pth"
    data = torch.load(path, weights_only=True)
    torch.save(dict(data, iteration=-5), path)
    before = _snapshot(finished)
    with pytest.raises(CorruptCheckpointError, match="'iteration' entry is a int"):
        _resume(tiny_run_cfg(finished))
    assert _snapshot(finished) == before  # metrics.json above all


@pytest.mark.parametrize(
    "ranks",
    [
        "not a list",
        [],
        [5],
        [{"data_seed": 0}],
        [{"rng": {"torch": "nonsense"}, "data_seed": 0}],
        [{"rng": {}, "data_seed": 2**70}],
    ],
)
def test_malformed_resume_records_are_one_error_naming_the_file(
    finished: Path,
    tiny_run_cfg,
    ranks,
) -> None:
    path = finished / "model_final.pth"
    data = torch.load(path, weights_only=True)
    torch.save(dict(data, ranks=ranks), path)
    before = _snapshot(finished)
    with pytest.raises(CorruptCheckpointError, match=r"model_final.pth: its 'ranks' entry"):
        _resume(tiny_run_cfg(finished))
    assert _snapshot(finished) == before


def test_malformed_scheduler_state_is_one_error(finished: Path, tiny_run_cfg) -> None:
    from atrous.checkpoint.errors import CheckpointError

    path = finished / "model_final.pth"
    data = torch.load(path, weights_only=True)
    torch.save(dict(data, scheduler={"last_epoch": "x", "max_iters": -1}), path)
    with pytest.raises(CheckpointError, match=r"its 'scheduler' entry cannot be loaded"):
        _resume(tiny_run_cfg(finished))


def test_smaller_max_iter_than_the_checkpoint_is_refused(finished: Path, tiny_run_cfg) -> None:
    cfg = tiny_run_cfg(finished)
    cfg.SOLVER.MAX_ITER = 2
    before = _snapshot(finished)
    with pytest.raises(ConfigError, match="only moves forward"):
        _resume(cfg)
    assert _snapshot(finished) == before


def _poly(it: int, *, base: float, max_iter: int, warmup: int = 2, factor: float = 0.001) -> float:
    warm = 1.0 if it >= warmup else factor * (1 - it / warmup) + it / warmup
    return base * warm * (1 - it / max_iter) ** 0.9


def test_larger_max_iter_extends_the_run_along_the_new_poly_curve(
    finished: Path,
    tiny_run_cfg,
    caplog,
) -> None:
    cfg = tiny_run_cfg(finished)
    cfg.SOLVER.MAX_ITER = 8
    old_lines = (finished / "metrics.json").read_text().splitlines()
    trainer = _resume(cfg)
    assert trainer.start_iter == 4
    trainer.train()
    records = [json.loads(line) for line in (finished / "metrics.json").read_text().splitlines()]
    assert [json.dumps(r, sort_keys=True) for r in records[: len(old_lines)]] == [
        json.dumps(json.loads(line), sort_keys=True) for line in old_lines
    ]
    lrs = {r["iteration"]: r["lr"] for r in records if "lr" in r}
    base = cfg.SOLVER.BASE_LR
    for it in range(4, 8):
        assert math.isclose(lrs[it], _poly(it, base=base, max_iter=8), rel_tol=1e-6), it
    assert torch.load(finished / "model_final.pth", weights_only=True)["iteration"] == 7


def test_base_lr_changed_on_resume_is_named_and_config_yaml_tells_the_truth(
    finished: Path,
    tiny_run_cfg,
    caplog,
) -> None:
    cfg = tiny_run_cfg(finished)
    old_lr = cfg.SOLVER.BASE_LR
    cfg.SOLVER.MAX_ITER = 6
    cfg.SOLVER.BASE_LR = old_lr * 10
    cfg.SOLVER.MOMENTUM = 0.5
    with caplog.at_level(logging.WARNING, logger="atrous"):
        trainer = _resume(cfg)
    (line,) = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert "SOLVER.BASE_LR" in line and "SOLVER.MOMENTUM" in line
    saved = yaml.safe_load((finished / "config.yaml").read_text())
    assert saved["SOLVER"]["BASE_LR"] == pytest.approx(old_lr)
    assert saved["SOLVER"]["MOMENTUM"] == 0.9
    assert saved["SOLVER"]["MAX_ITER"] == 6  # what the run does follow
    trainer.train()
    records = [json.loads(x) for x in (finished / "metrics.json").read_text().splitlines()]
    lr4 = next(r["lr"] for r in records if r.get("iteration") == 4 and "lr" in r)
    assert math.isclose(lr4, _poly(4, base=old_lr, max_iter=6), rel_tol=1e-6)
