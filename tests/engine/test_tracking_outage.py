"""A tracker that goes away or hangs does not hold training up, and the run says what it lost.

The first test kills a real MLflow tracking server (its own, so the other tracking tests keep
theirs) in the middle of a training run; the others drive `BackgroundDelivery` with a backend
that blocks or fails on cue, to pin down its timing and its report.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path

import pytest

from atrous.engine.hooks import HookBase
from atrous.engine.tracking import BackgroundDelivery
from tests.engine.mlflow_server import MlflowServer, json_histories


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


def _delivered_up_to(client, out: Path) -> int:
    """The last iteration of total_loss the server holds (-1 before the run exists)."""
    try:
        run_id = json.loads((out / "tracking.json").read_text())["mlflow"]["run_id"]
    except (OSError, ValueError, KeyError):
        return -1
    return max((m.step for m in client.get_metric_history(run_id, "total_loss")), default=-1)


class _StopServer(HookBase):
    """After iteration `at`, once the server holds iteration `at - 1`, kill it."""

    def __init__(self, server: MlflowServer, out: Path, at: int) -> None:
        self.server, self.out, self.at = server, out, at
        self.client = server.client()

    def after_step(self) -> None:
        if self.trainer.iter != self.at:
            return
        deadline = time.monotonic() + 120
        while _delivered_up_to(self.client, self.out) < self.at - 1:
            assert time.monotonic() < deadline, "no point reached the server"
            time.sleep(0.1)
        self.server.stop(at_once=True)


@pytest.mark.slow
# mlflow's SQL store, read directly here, uses an option SQLAlchemy deprecates.
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")
def test_server_stopped_mid_run_training_finishes_and_states_the_loss(
    tiny_run_cfg, mlflow_server: MlflowServer, tmp_path: Path, caplog
) -> None:
    from mlflow.tracking import MlflowClient  # before the delivery thread imports it too

    from atrous.engine import Trainer

    out = tmp_path / "run"
    cfg = tiny_run_cfg(out)
    cfg.merge_from_list(
        ["SOLVER.MAX_ITER", "10", "SOLVER.CHECKPOINT_PERIOD", "100",
         "TRACKING.BACKENDS", "['mlflow']", "TRACKING.MLFLOW_URI", mlflow_server.uri,
         "TRACKING.PROJECT", "outage", "TRACKING.TIMEOUT", "2", "TRACKING.FLUSH_TIMEOUT", "5"]
    )  # fmt: skip

    class Stopping(Trainer):
        def build_hooks(self):
            return [*super().build_hooks(), _StopServer(mlflow_server, out, at=3)]

    trainer = Stopping(cfg)
    trainer.resume_or_load(resume=False)
    with caplog.at_level(logging.INFO, logger="atrous"):
        trainer.train()

    # Training ran to its end as if nothing happened.
    assert (out / "model_final.pth").is_file()
    expected = json_histories(out / "metrics.json")
    assert [s for s, _ in expected["total_loss"]] == list(range(10))

    log = caplog.text
    assert log.count("MLflow: cannot deliver to") == 1
    assert "training goes on and delivery is retried in the background" in log
    assert log.count("MLflow: not delivered") == 1
    found = re.search(
        rf"MLflow: not delivered to {re.escape(mlflow_server.uri)} within "
        r"TRACKING.FLUSH_TIMEOUT 5 s: (\d+) of (\d+) metric points \(iterations (\d+)-(\d+)\), "
        r"(\d+) of (\d+) artifacts, the run's end status \(FINISHED\) \(last error: .+\)\. "
        r"metrics.json and the files in OUTPUT_DIR hold everything\.",
        log,
    )
    assert found, log[-3000:]
    lost, sent, first, last, lost_files, sent_files = map(int, found.groups())
    assert sent == sum(len(points) for points in expected.values())
    assert 2 < first <= 4 and last == 9 and lost_files == sent_files > 0

    # What the server kept (read from its store, the server being gone) is exactly the rest:
    # every point of the iterations before `first`, none after.
    store = MlflowClient(mlflow_server.store)
    run_id = json.loads((out / "tracking.json").read_text())["mlflow"]["run_id"]
    kept = {key: [m.step for m in store.get_metric_history(run_id, key)] for key in expected}
    assert sum(map(len, kept.values())) == sent - lost
    assert all(step < first for steps in kept.values() for step in steps)
    assert kept["total_loss"] == list(range(first))
    assert store.get_run(run_id).info.status == "RUNNING"  # its end never arrived


class _Tracker:
    """A backend whose calls block until `gate` opens, or fail while `down` is set."""

    name = "Test"
    target = "the test's tracker"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.down = threading.Event()
        self.received: list = []

    def _call(self, what) -> None:
        self.gate.wait()
        if self.down.is_set():
            raise ConnectionError("connection refused")
        self.received.append(what)

    def open(self):
        self._call("open")
        return {}

    def log_metrics(self, points) -> None:
        self._call(list(points))

    def log_artifact(self, path, folder) -> None:
        self._call(path)

    def close(self, status) -> None:
        self._call(status)


def test_a_hanging_tracker_costs_the_caller_nothing_and_is_reported() -> None:
    tracker = _Tracker()
    delivery = BackgroundDelivery(tracker)
    start = time.perf_counter()
    for it in range(200):
        delivery.log_metrics([("total_loss", 1.0, it, 0)])
    delivery.log_artifact("metrics.json")
    assert time.perf_counter() - start < 0.5  # queued, not sent: the tracker has not answered
    message = delivery.close("FINISHED", timeout=0.2)
    assert message == (
        "Test: not delivered to the test's tracker within TRACKING.FLUSH_TIMEOUT 0.2 s: the run "
        "itself (never created), 200 of 200 metric points (iterations 0-199), 1 of 1 artifacts. "
        "metrics.json and the files in OUTPUT_DIR hold everything."
    )
    tracker.gate.set()  # answering now changes nothing: the delivery was given up
    time.sleep(0.2)
    assert tracker.received == ["open"]


def test_a_tracker_that_comes_back_gets_everything_in_order(caplog) -> None:
    tracker = _Tracker()
    tracker.down.set()
    tracker.gate.set()
    delivery = BackgroundDelivery(tracker, first_pause=0.05, max_pause=0.1)
    for it in range(5):
        delivery.log_metrics([("total_loss", float(it), it, 0)])
    time.sleep(0.3)  # several failed attempts
    tracker.down.clear()
    assert delivery.close("FINISHED", timeout=10) is None
    # The backlog arrives merged into one call, in order, then the end of the run.
    assert tracker.received == [
        "open",
        [("total_loss", float(it), it, 0) for it in range(5)],
        "FINISHED",
    ]
    assert delivery.failures >= 2
    warnings = [r for r in caplog.records if "cannot deliver" in r.getMessage()]
    assert len(warnings) == 1  # said once, however many attempts failed
