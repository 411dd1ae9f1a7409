"""Best checkpoint and early stopping on the real trainer: the metric peaks then falls, the run
keeps the peak's weights and stops cleanly; SIGTERM and --resume in between change nothing.

The evaluation values are scripted (a trainer whose `test` returns them in order): a real
training run of a few iterations cannot be made to peak and fall on cue.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from atrous.engine.best_checkpoint import BestMetricState
from atrous.engine.preemption import TrainingPreempted

# Evaluations after iterations 0, 1, 2, ... (and the final one, at 8): the peak is after
# iteration 2, then it falls.
CURVE = [10.0, 20.0, 35.0, 30.0, 34.0, 12.0, 50.0, 60.0, 70.0]
PATIENCE = 3  # 30, 34, 12 do not beat 35: the run stops after iteration 5


def _scripted_trainer(values: list[float], *, signal_after: int | None = None):
    from atrous.engine import Trainer

    class Scripted(Trainer):
        evaluations: ClassVar[list[int]] = []

        def _evaluate_during_training(self):
            it = self._trainer.iter
            Scripted.evaluations.append(it)
            if signal_after is not None and it == signal_after:
                os.kill(os.getpid(), signal.SIGTERM)
            return {"sem_seg": {"mIoU": values[it], "fwIoU": 0.5}}

    return Scripted


def _cfg(tiny_run_cfg, out: Path, *extra: str):
    cfg = tiny_run_cfg(out)
    cfg.merge_from_list(
        ["DATASETS.TEST", "('synthetic_sem_seg_val',)", "TEST.EVAL_PERIOD", "1",
         "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.MAX_TO_KEEP", "0",
         "SOLVER.BEST_CHECKPOINT.METRIC", "sem_seg/mIoU",
         "SOLVER.EARLY_STOP.PATIENCE", str(PATIENCE), *extra]
    )  # fmt: skip
    return cfg


def _run(cls, cfg, *, resume: bool) -> None:
    from atrous.engine.defaults import seed_all_rng

    if not resume:
        seed_all_rng(0)  # what `default_setup` does for a command-line run: same initial weights
    trainer = cls(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture
def stopped(tmp_path: Path, tiny_run_cfg, caplog) -> Path:
    out = tmp_path / "run"
    cls = _scripted_trainer(CURVE)
    with caplog.at_level(logging.INFO, logger="atrous"):
        _run(cls, _cfg(tiny_run_cfg, out), resume=False)
    assert cls.evaluations == [0, 1, 2, 3, 4, 5]
    log = caplog.text
    assert "New best sem_seg/mIoU 35 at iteration 2 (was 20 at iteration 1)" in log
    assert (
        "Training ends: early stopping at iteration 5: sem_seg/mIoU has not improved for 3 "
        "evaluations (SOLVER.EARLY_STOP.PATIENCE 3); the best, 35 at iteration 2, is in "
        "model_best.pth"
    ) in log
    return out


def test_metric_peaks_then_falls_best_is_kept_and_the_run_stops(stopped: Path) -> None:
    record = json.loads((stopped / "model_best.json").read_text())
    assert record == {
        "metric": "sem_seg/mIoU",
        "mode": "max",
        "value": 35.0,
        "iteration": 2,
        "file": "model_best.pth",
    }
    best = torch.load(stopped / "model_best.pth", weights_only=True)
    assert best["best"] == record
    # Weights only, no 'iteration': a resumed run never continues from the best file.
    assert "optimizer" not in best and "iteration" not in best
    _assert_same_weights(stopped / "model_best.pth", stopped / "model_0000002.pth")
    # The run ended like a finished one: model_final at the stopping iteration, and nothing
    # written for iterations that did not run.
    assert (stopped / "last_checkpoint").read_text() == "model_final.pth"
    final = torch.load(stopped / "model_final.pth", weights_only=True)
    assert final["iteration"] == 5
    assert final["best_metric"]["evaluations_without_improvement"] == PATIENCE
    assert not (stopped / "model_0000006.pth").exists()
    lines = [json.loads(x) for x in (stopped / "metrics.json").read_text().splitlines()]
    assert max(r["iteration"] for r in lines) == 5
    assert [r["sem_seg/mIoU"] for r in lines if "sem_seg/mIoU" in r] == CURVE[:6]


def test_resume_of_an_early_stopped_run_trains_nothing_unless_patience_grows(
    stopped: Path, tiny_run_cfg, caplog
) -> None:
    cls = _scripted_trainer(CURVE)
    with caplog.at_level(logging.INFO, logger="atrous"):
        _run(cls, _cfg(tiny_run_cfg, stopped), resume=True)
    assert cls.evaluations == []
    assert "stopped early at iteration 5" in caplog.text
    assert "Pass a larger SOLVER.EARLY_STOP.PATIENCE to continue it" in caplog.text

    # More patience: the run goes on from iteration 6, where the metric rises to a new best.
    cls = _scripted_trainer(CURVE)
    _run(cls, _cfg(tiny_run_cfg, stopped, "SOLVER.EARLY_STOP.PATIENCE", "5"), resume=True)
    # The final evaluation, of iteration 7's weights, is recorded at MAX_ITER (8) in metrics.json;
    # model_best.json names the iteration of the weights, like model_final.pth does.
    assert cls.evaluations == [6, 8]
    assert json.loads((stopped / "model_best.json").read_text())["iteration"] == 7
    _assert_same_weights(stopped / "model_best.pth", stopped / "model_final.pth")
    # model_final.pth, written before the final evaluation, is written again after it: a run
    # extended from it (larger SOLVER.MAX_ITER) goes on from the right best value.
    state = torch.load(stopped / "model_final.pth", weights_only=True)["best_metric"]
    assert state["last_evaluation"] == 8 and state["best_value"] == 70.0
    assert state["best_iteration"] == 7


def test_sigterm_and_resume_keep_the_best_value_and_the_patience_count(
    stopped: Path, tmp_path: Path, tiny_run_cfg
) -> None:
    out = tmp_path / "interrupted"
    # SIGTERM during the evaluation after iteration 3 (one evaluation without improvement).
    cls = _scripted_trainer(CURVE, signal_after=3)
    with pytest.raises(TrainingPreempted) as info:
        _run(cls, _cfg(tiny_run_cfg, out), resume=False)
    assert info.value.iteration == 3
    saved = torch.load(out / "model_0000003.pth", weights_only=True)["best_metric"]
    assert saved["best_value"] == 35.0 and saved["best_iteration"] == 2
    assert saved["evaluations_without_improvement"] == 1 and saved["last_evaluation"] == 3

    cls = _scripted_trainer(CURVE)
    _run(cls, _cfg(tiny_run_cfg, out), resume=True)
    assert cls.evaluations == [4, 5]  # none repeated, none missed: it stops where the other did
    for name in ("model_best.pth", "model_final.pth"):
        _assert_same_weights(out / name, stopped / name)
    assert (out / "model_best.json").read_text() == (stopped / "model_best.json").read_text()
    a = torch.load(out / "model_final.pth", weights_only=True)["best_metric"]
    b = torch.load(stopped / "model_final.pth", weights_only=True)["best_metric"]
    assert a == b


@pytest.mark.parametrize(
    ("mode", "values", "bests", "counts"),
    [
        ("max", [1.0, 3.0, 2.0, float("nan"), 3.0, 4.0], [0, 1, 1, 1, 1, 5], [0, 0, 1, 2, 3, 0]),
        ("min", [5.0, 4.0, 6.0, 3.0], [0, 1, 1, 3], [0, 0, 1, 0]),
    ],
)
def test_state_follows_mode_ignores_nan_and_ties(mode, values, bests, counts) -> None:
    state = BestMetricState("loss", mode)
    for it, value in enumerate(values):
        state.update(value, it)
        assert state.best_iteration == bests[it]
        assert state.evaluations_without_improvement == counts[it]


def test_min_delta_counts_small_gains_as_none() -> None:
    state = BestMetricState("sem_seg/mIoU", "max", min_delta=1.0)
    for it, value in enumerate([10.0, 10.5, 10.9, 11.5]):
        state.update(value, it)
    # Every rise is a new best file, but only 11.5 beats 10 by more than 1.
    assert state.best_iteration == 3 and state.evaluations_without_improvement == 0
    state.update(12.0, 4)
    assert state.best_iteration == 4 and state.evaluations_without_improvement == 1
    assert state.exhausted(1) and not state.exhausted(0)


def test_state_of_another_metric_is_not_taken_over(caplog) -> None:
    old = BestMetricState("sem_seg/mIoU", "max")
    old.update(40.0, 9)
    new = BestMetricState("sem_seg/fwIoU", "max")
    with caplog.at_level(logging.WARNING, logger="atrous"):
        new.load_state_dict(old.state_dict())
    assert new.best_value is None and "start afresh" in caplog.text
    with pytest.raises(TypeError, match="malformed"):
        old.load_state_dict({**old.state_dict(), "evaluations_without_improvement": "3"})


def test_export_bundle_says_which_checkpoint_it_took(
    stopped: Path, tiny_run_cfg, tmp_path: Path, capsys
) -> None:
    from atrous.cli.main import main

    config = tmp_path / "config.yaml"
    config.write_text(_cfg(tiny_run_cfg, stopped).dump())
    for name in ("model_best.pth", "model_final.pth"):
        bundle = tmp_path / name.replace(".pth", "")
        code = main(["export", "--format", "bundle", "--config-file", str(config),
                     "--output", str(bundle), "MODEL.WEIGHTS", str(stopped / name)])  # fmt: skip
        assert code == 0
        meta = json.loads((bundle / "bundle.json").read_text())
        assert meta["source_weights"] == name
        printed = capsys.readouterr().out
        if name == "model_best.pth":
            assert (
                f"weights: {stopped / name} (the best evaluation of its run: sem_seg/mIoU 35 at "
                "iteration 2)"
            ) in printed
            # The bundle's metrics are those of the evaluation the best checkpoint won.
            assert meta["metrics"]["source"] == "model_best.json"
            assert meta["metrics"]["iteration"] == 2
            assert meta["metrics"]["values"] == {"sem_seg/mIoU": 35.0, "sem_seg/fwIoU": 0.5}
        else:
            assert (
                f"weights: {stopped / name} (the final weights; the best evaluation, "
                "sem_seg/mIoU 35 at iteration 2, is model_best.pth)"
            ) in printed
