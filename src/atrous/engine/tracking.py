"""Experiment tracking: MLflow and Weights & Biases next to metrics.json and TensorBoard.

``TRACKING.BACKENDS: [tensorboard, mlflow]`` (or ``wandb``) sends a training run to a tracker:
the resolved config as parameters, every scalar the writers publish at its iteration (losses, LR,
times, each evaluation's metrics: exactly the lines of ``metrics.json``), and when the run ends
its results as artifacts (``metrics.json``, ``training_curves.png``, ``config.yaml``, the
evaluation report, ``model_best.json`` and a model bundle of the best or final weights).

Only rank 0 tracks. The run's id is kept in ``OUTPUT_DIR/tracking.json``, so ``--resume``
continues the same run, from the iteration the checkpoint resumes at: the tracker receives each
iteration once, as metrics.json keeps it.

A tracker must never hold training up: everything is handed to a `BackgroundDelivery`, a thread
per backend that delivers in order and retries what fails (server down, slow, restarting) with a
growing pause. Training only appends to a queue. When training ends, the thread gets up to
TRACKING.FLUSH_TIMEOUT seconds to catch up; then the run says once what was not delivered.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from atrous.utils.file_io import atomic_write_json

from .events import EventStorage
from .hooks import HookBase
from .preemption import TrainingPreempted
from .tracking_backends import MLflowBackend, Point, WandbBackend, is_refusal

__all__ = [
    "TRACKING_FILE",
    "BackgroundDelivery",
    "TrackingHook",
    "build_tracking_hook",
    "config_params",
    "run_artifacts",
]

logger = logging.getLogger(__name__)

TRACKING_FILE = "tracking.json"
_DEFAULT_PROJECT = "atrous"
# MLflow refuses longer parameter values (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
_MAX_PARAM_LENGTH = 6000


def config_params(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A config as flat parameters: ``{"SOLVER.BASE_LR": "0.01", ...}`` (values as text)."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(config_params(value, name + "."))
        else:
            text = repr(list(value)) if isinstance(value, tuple | list) else str(value)
            out[name] = text[:_MAX_PARAM_LENGTH]
    return out


# ---------------------------------------------------------------------------------------------
# Delivery in the background
# ---------------------------------------------------------------------------------------------


class _Op:
    __slots__ = ("args", "kind")

    def __init__(self, kind: str, args: Any) -> None:
        self.kind = kind
        self.args = args


class BackgroundDelivery:
    """Runs a backend's calls in order on a thread of its own, retrying each until it succeeds.

    The training thread only appends to a queue (`open`, `log_metrics`, `log_artifact`), so a
    tracker that is down or slow costs it nothing. A failed call is retried after a pause that
    grows from `first_pause` to `max_pause` seconds; later calls wait behind it (a run's points
    arrive in order), and consecutive metric calls are merged so that a server that comes back
    receives the backlog in few requests. The first failure is logged once; `close` reports what
    could not be delivered.

    Args:
        backend: an `MLflowBackend`, `WandbBackend` or anything with their methods.
        on_open: called on the delivery thread with the record `backend.open` returns
            (the run id for tracking.json).
    """

    def __init__(
        self,
        backend: Any,
        *,
        on_open: Callable[[dict[str, Any]], None] | None = None,
        first_pause: float = 0.5,
        max_pause: float = 10.0,
    ) -> None:
        self.backend = backend
        self.on_open = on_open
        self.first_pause = first_pause
        self.max_pause = max_pause
        self._queue: collections.deque[_Op] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False
        self._abandoned = False
        self.failures = 0
        self.last_error = ""
        self.points_sent = 0
        self.points_delivered = 0
        self.artifacts_sent = 0
        self.artifacts_delivered = 0
        self.opened = False
        self.refused: list[_Op] = []
        self._status = "FINISHED"
        self._thread = threading.Thread(
            target=self._work, name=f"atrous-{backend.name}-delivery", daemon=True
        )
        self._queue.append(_Op("open", None))
        self._thread.start()

    # -- the training thread's side ----------------------------------------------------------

    def log_metrics(self, points: list[Point]) -> None:
        if not points:
            return
        with self._cond:
            self.points_sent += len(points)
            self._queue.append(_Op("metrics", list(points)))
            self._cond.notify()

    def log_artifact(self, path: str, folder: str = "") -> None:
        with self._cond:
            self.artifacts_sent += 1
            self._queue.append(_Op("artifact", (path, folder)))
            self._cond.notify()

    def request_close(self, status: str) -> None:
        """Queue the end of the run with `status` ("FINISHED", "KILLED", "FAILED")."""
        with self._cond:
            self._status = status
            self._queue.append(_Op("close", status))
            self._cond.notify()

    def close(self, status: str | None = None, timeout: float = 60.0) -> str | None:
        """Wait up to `timeout` s for the queue to drain (ending the run with `status` unless
        `request_close` did); returns what was not delivered, then delivers nothing more.

        Returns:
            None when everything arrived; else one sentence naming the undelivered (or refused)
            metric points (how many, which iterations), artifacts and the last error.
        """
        if status is not None:
            self.request_close(status)
        status = self._status
        with self._cond:
            self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)
            self._abandoned = True
            pending = list(self._queue) + self.refused
            self._cond.notify()
        if not pending:
            if self.failures:
                logger.info(
                    "%s: everything was delivered to %s (after %d failed attempts)",
                    self.backend.name,
                    self.backend.target,
                    self.failures,
                )
            return None
        points = [p for op in pending if op.kind == "metrics" for p in op.args]
        artifacts = sum(op.kind == "artifact" for op in pending)
        iterations = sorted({p[2] for p in points})
        parts = []
        if points:
            parts.append(
                f"{len(points)} of {self.points_sent} metric points (iterations "
                f"{iterations[0]}-{iterations[-1]})"
            )
        if artifacts:
            parts.append(f"{artifacts} of {self.artifacts_sent} artifacts")
        if not self.opened:
            parts.insert(0, "the run itself (never created)")
        elif any(op.kind == "close" for op in pending):
            parts.append(f"the run's end status ({status})")
        how = f"within TRACKING.FLUSH_TIMEOUT {timeout:g} s" + (
            f" ({len(self.refused)} requests refused)" if self.refused else ""
        )
        return (
            f"{self.backend.name}: not delivered to {self.backend.target} {how}: "
            f"{', '.join(parts)}"
            + (f" (last error: {self.last_error})" if self.last_error else "")
            + ". metrics.json and the files in OUTPUT_DIR hold everything."
        )

    # -- the delivery thread -------------------------------------------------------------------

    def _refuse(self, op: _Op) -> None:
        """Drop a call the tracker refused (it would refuse it again), saying so once."""
        with self._cond:
            if self._queue and self._queue[0] is op:
                self._queue.popleft()
            self.refused.append(op)
            self._busy = False
            self._cond.notify_all()
        if len(self.refused) == 1:
            logger.warning(
                "%s refused data (%s); it is left out and training goes on",
                self.backend.name,
                self.last_error,
            )

    def _take(self) -> _Op | None:
        """The next call to make, with consecutive metric calls merged; None once abandoned."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._abandoned)
            if self._abandoned:
                return None
            op = self._queue[0]
            if op.kind == "metrics":
                while len(self._queue) > 1 and self._queue[1].kind == "metrics":
                    nxt = self._queue[1]
                    del self._queue[1]
                    op.args.extend(nxt.args)
            self._busy = True
            return op

    def _run(self, op: _Op) -> None:
        if op.kind == "open":
            record = self.backend.open()
            self.opened = True
            if self.on_open is not None:
                self.on_open(record)
        elif op.kind == "metrics":
            self.backend.log_metrics(op.args)
        elif op.kind == "artifact":
            self.backend.log_artifact(*op.args)
        else:
            self.backend.close(op.args)

    def _work(self) -> None:
        pause = self.first_pause
        while True:
            op = self._take()
            if op is None:
                return
            try:
                self._run(op)
            except Exception as error:  # whatever the client raises: retried, never raised
                self.failures += 1
                self.last_error = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                if op.kind in ("metrics", "artifact") and is_refusal(error):
                    self._refuse(op)
                    continue
                if self.failures == 1:
                    logger.warning(
                        "%s: cannot deliver to %s (%s); training goes on and delivery is "
                        "retried in the background",
                        self.backend.name,
                        self.backend.target,
                        self.last_error,
                    )
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait_for(lambda: self._abandoned, pause)
                pause = min(pause * 2, self.max_pause)
                continue
            pause = self.first_pause
            with self._cond:
                if self._queue and self._queue[0] is op:
                    self._queue.popleft()
                if op.kind == "metrics":
                    self.points_delivered += len(op.args)
                elif op.kind == "artifact":
                    self.artifacts_delivered += 1
                self._busy = False
                self._cond.notify_all()
                if op.kind == "close":
                    return


# ---------------------------------------------------------------------------------------------
# The hook
# ---------------------------------------------------------------------------------------------


class TrackingHook(HookBase):
    """Publishes the storage's scalars to the trackers and, at the end, the run's files.

    Writes on the schedule of `PeriodicWriter` (every `period` iterations and at the end) what
    `JSONWriter` writes: each scalar's latest value (smoothed ones as the median of
    `window_size`) at the iteration it was recorded, once. Registered after every other hook, so
    the end-of-run files (curves, final evaluation, best checkpoint) exist when it uploads them.

    Args:
        deliveries: one `BackgroundDelivery` per backend.
        period: iterations between writes.
        start_iter: points of earlier iterations are not sent (a resumed run's predecessor sent
            them).
        artifacts: called when a run ends normally; returns ``(path, folder in the run)`` pairs.
        flush_timeout: seconds the end of training waits for the deliveries.
    """

    def __init__(
        self,
        deliveries: list[BackgroundDelivery],
        *,
        period: int,
        start_iter: int = 0,
        artifacts: Callable[[], Iterable[tuple[str, str]]] | None = None,
        flush_timeout: float = 60.0,
        window_size: int = 20,
    ) -> None:
        self.deliveries = deliveries
        self.period = period
        self.artifacts = artifacts
        self.flush_timeout = flush_timeout
        self.window_size = window_size
        self._last_written = start_iter - 1
        self.undelivered: list[str] = []

    def _write(self, storage: EventStorage) -> None:
        now = int(time.time() * 1000)
        points = [
            (name, value, it, now)
            for name, (value, it) in storage.latest_with_smoothing_hint(self.window_size).items()
            if it > self._last_written
        ]
        if not points:
            return
        self._last_written = max(p[2] for p in points)
        for delivery in self.deliveries:
            delivery.log_metrics(points)

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it == self.trainer.max_iter - 1:
            self._write(self.trainer.storage)

    def after_train(self) -> None:
        trainer = self.trainer
        self._write(trainer.storage)
        error = trainer.exception
        finished = trainer.iter >= trainer.max_iter or bool(trainer.stop_reason)
        if finished and error is None:
            status = "FINISHED"
            files = list(self.artifacts()) if self.artifacts is not None else []
        else:
            status = "KILLED" if isinstance(error, TrainingPreempted) else "FAILED"
            files = []
        for delivery in self.deliveries:
            for path, folder in files:
                delivery.log_artifact(path, folder)
        # The deliveries run side by side; the wait is for all of them together.
        for delivery in self.deliveries:
            delivery.request_close(status)
        deadline = time.monotonic() + self.flush_timeout
        for delivery in self.deliveries:
            left = max(0.0, deadline - time.monotonic())
            message = delivery.close(timeout=left)
            if message:
                self.undelivered.append(message)
                logger.warning("%s", message)


# ---------------------------------------------------------------------------------------------
# From the config
# ---------------------------------------------------------------------------------------------


def _read_record(output_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(output_dir, TRACKING_FILE), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


class _RecordFile:
    """``OUTPUT_DIR/tracking.json``: each backend's run, written as soon as it is known."""

    def __init__(self, output_dir: str, initial: Mapping[str, Any]) -> None:
        self.path = os.path.join(output_dir, TRACKING_FILE)
        self.record = dict(initial)
        self._lock = threading.Lock()

    def set(self, key: str, value: Mapping[str, Any]) -> None:
        with self._lock:
            self.record[key] = dict(value)
            atomic_write_json(self.path, self.record)


def run_artifacts(cfg: Any) -> list[tuple[str, str]]:
    """The files a finished run uploads: ``(path, folder in the run)`` for those that exist.

    The model bundle is written here first (``OUTPUT_DIR/model_bundle``, from
    ``model_best.pth`` when there is one, else ``model_final.pth``) when TRACKING.LOG_MODEL.
    """
    out = cfg.OUTPUT_DIR
    found = [
        (os.path.join(out, name), "")
        for name in (
            "metrics.json",
            "training_curves.png",
            "config.yaml",
            "model_best.json",
            "log.txt",
        )
        if os.path.isfile(os.path.join(out, name))
    ]
    for dataset in cfg.DATASETS.TEST:
        folder = os.path.join(out, "inference", dataset)
        for name in ("report.html", "report_files", "sem_seg_evaluation.json"):
            path = os.path.join(folder, name)
            if os.path.exists(path):
                found.append((path, f"report/{dataset}" + ("/report_files" * os.path.isdir(path))))
    if cfg.TRACKING.LOG_MODEL:
        bundle = _write_model_bundle(cfg)
        if bundle is not None:
            found.append((bundle, "model_bundle"))
    return found


def _write_model_bundle(cfg: Any) -> str | None:
    """``OUTPUT_DIR/model_bundle`` from the best checkpoint, else the final one; None if neither
    can be read (a warning says why: the run's own files are unaffected)."""
    from atrous.checkpoint import Checkpointer
    from atrous.checkpoint.best import BEST_FILE
    from atrous.deploy.bundle_writer import write_bundle
    from atrous.modeling import build_model

    out = cfg.OUTPUT_DIR
    weights = next(
        (
            os.path.join(out, n)
            for n in (BEST_FILE, "model_final.pth")
            if os.path.isfile(os.path.join(out, n))
        ),
        None,
    )
    if weights is None:
        return None
    bundle_cfg = cfg.clone()
    bundle_cfg.defrost()
    bundle_cfg.MODEL.WEIGHTS = weights
    bundle_cfg.MODEL.DEVICE = "cpu"
    bundle_cfg.freeze()
    try:
        model = build_model(bundle_cfg)
        Checkpointer(model).load(weights, checkpointables=[])
        model.eval()
        path = write_bundle(os.path.join(out, "model_bundle"), cfg=bundle_cfg, model=model)
    except Exception as error:  # a finished run stays finished; the files are all there
        logger.warning("Could not write the model bundle from %s: %s", weights, error)
        return None
    logger.info("Model bundle for the trackers written from %s", os.path.basename(weights))
    return os.fspath(path)


def build_tracking_hook(cfg: Any, *, resumed: bool, start_iter: int) -> TrackingHook | None:
    """The `TrackingHook` of TRACKING.BACKENDS (mlflow, wandb), or None when neither is listed.

    Call on rank 0 only. With `resumed`, the runs named in ``OUTPUT_DIR/tracking.json``
    are continued and only iterations from `start_iter` on are sent.
    """
    backends = [b for b in cfg.TRACKING.BACKENDS if b in ("mlflow", "wandb")]
    if not backends:
        return None
    output_dir = cfg.OUTPUT_DIR
    previous = _read_record(output_dir) if resumed else {}
    record = _RecordFile(output_dir, previous)
    project = cfg.TRACKING.PROJECT or _DEFAULT_PROJECT
    run_name = cfg.TRACKING.RUN_NAME or os.path.basename(os.path.abspath(output_dir))
    params = config_params(cfg)
    resumed_at = start_iter if resumed else None
    deliveries = []
    if "mlflow" in backends:
        old = previous.get("mlflow") or {}
        same_server = old.get("tracking_uri") == cfg.TRACKING.MLFLOW_URI
        if old and not same_server:
            logger.warning(
                "tracking.json names MLflow run %s on %r, this run tracks to %r: a new run is "
                "started there",
                old.get("run_id"),
                old.get("tracking_uri"),
                cfg.TRACKING.MLFLOW_URI,
            )
        backend = MLflowBackend(
            tracking_uri=cfg.TRACKING.MLFLOW_URI,
            experiment=project,
            run_name=run_name,
            params=params,
            run_id=old.get("run_id") if same_server else None,
            timeout=float(cfg.TRACKING.TIMEOUT),
            resumed_at=resumed_at,
        )
        deliveries.append(BackgroundDelivery(backend, on_open=lambda r: record.set("mlflow", r)))
    if "wandb" in backends:
        old = previous.get("wandb") or {}
        run_id = old.get("run_id") if isinstance(old.get("run_id"), str) else None
        # W&B takes the id from us: known (and recorded) before any server is reached.
        run_id = run_id or secrets.token_hex(4)
        record.set("wandb", {"run_id": run_id, "project": project})
        backend = WandbBackend(
            project=project,
            run_name=run_name,
            params=params,
            run_id=run_id,
            directory=output_dir,
            mode=cfg.TRACKING.WANDB_MODE,
            resumed_at=resumed_at,
        )
        deliveries.append(BackgroundDelivery(backend))
    return TrackingHook(
        deliveries,
        period=int(cfg.LOG_PERIOD),
        start_iter=start_iter if resumed else 0,
        artifacts=lambda: run_artifacts(cfg),
        flush_timeout=float(cfg.TRACKING.FLUSH_TIMEOUT),
    )
