"""The trackers `atrous.engine.tracking` delivers to: one MLflow run, one W&B run.

Each method may block (a slow server) or raise (a server that is down, a refused request);
`atrous.engine.tracking.BackgroundDelivery` calls them off the training thread and retries.
Both libraries are imported on first use, so atrous works without them.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any

__all__ = ["MLflowBackend", "Point", "WandbBackend", "is_refusal", "mlflow_metric_name"]

logger = logging.getLogger(__name__)

Point = tuple[str, float, int, int]  # name, value, iteration, wall time (ms)

# MLflow's log_batch takes at most 1000 metrics and 100 parameters per call.
_METRICS_PER_CALL = 1000
_PARAMS_PER_CALL = 100


def mlflow_metric_name(name: str) -> str:
    """`name` with what MLflow refuses in a metric name replaced by ``_``.

    MLflow takes letters, digits, ``_ - . /`` and spaces; per-class results such as
    ``sem_seg/min(IoU, B-Iou)-road`` become ``sem_seg/min_IoU_ B-Iou_-road``.
    """
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", name)


def is_refusal(error: Exception) -> bool:
    """Whether a tracker refused a request for what it holds (HTTP 4xx but 408/429): sending
    it again would be refused again, unlike a server that is down, slow or overloaded."""
    code = getattr(error, "get_http_status_code", None)
    try:
        status = int(code()) if callable(code) else 0
    except Exception:
        return False
    return 400 <= status < 500 and status not in (408, 429)


class MLflowBackend:
    """One MLflow run through `mlflow.tracking.MlflowClient` (no global mlflow state is touched).

    Args:
        tracking_uri: the server (``http://host:port``) or store; "" is MLflow's default
            (``MLFLOW_TRACKING_URI``, else its local store).
        experiment: the experiment name (created when missing).
        run_name: the run's name in the UI.
        params: the parameters, logged when the run is created.
        run_id: the run to continue (``--resume``); None creates one.
        timeout: seconds one request may take; MLflow's own retries are switched off because
            `BackgroundDelivery` retries without holding anything up.
        resumed_at: the iteration a resumed run continues at (recorded as a tag).
    """

    name = "MLflow"

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        params: Mapping[str, str],
        run_id: str | None = None,
        timeout: float = 10.0,
        resumed_at: int | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.params = dict(params)
        self.run_id = run_id
        self.timeout = timeout
        self.resumed_at = resumed_at
        self._client: Any = None

    @property
    def target(self) -> str:
        return self.tracking_uri or "MLflow's default tracking URI"

    def open(self) -> dict[str, Any]:
        # MLflow reads these at each request; a user's own settings win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(self.timeout))))
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri or None)
        if self.run_id is not None:
            try:
                run = client.get_run(self.run_id)
            except MlflowException as error:
                if getattr(error, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    raise
                logger.warning(
                    "MLflow run %s of tracking.json is not on %s: starting a new run",
                    self.run_id,
                    self.target,
                )
                self.run_id = None
            else:
                client.update_run(self.run_id, status="RUNNING")
                if self.resumed_at is not None:
                    client.set_tag(self.run_id, f"atrous.resumed_at.{self.resumed_at}", "true")
                self._client = client
                return self._record(client, run.info.experiment_id)
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(self.experiment)
        )
        run = client.create_run(experiment_id, run_name=self.run_name, tags={"atrous": "train"})
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in self.params.items()]
        for i in range(0, len(items), _PARAMS_PER_CALL):
            client.log_batch(self.run_id, params=items[i : i + _PARAMS_PER_CALL])
        self._client = client
        return self._record(client, experiment_id)

    def _record(self, client: Any, experiment_id: str) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "experiment_id": experiment_id,
            "tracking_uri": self.tracking_uri,
        }

    def log_metrics(self, points: list[Point]) -> None:
        from mlflow.entities import Metric

        metrics = [
            Metric(mlflow_metric_name(name), value, ms, it) for name, value, it, ms in points
        ]
        for i in range(0, len(metrics), _METRICS_PER_CALL):
            self._client.log_batch(self.run_id, metrics=metrics[i : i + _METRICS_PER_CALL])

    def log_artifact(self, path: str, folder: str) -> None:
        if os.path.isdir(path):
            self._client.log_artifacts(self.run_id, path, folder or None)
        else:
            self._client.log_artifact(self.run_id, path, folder or None)

    def close(self, status: str) -> None:
        self._client.set_terminated(self.run_id, status=status)


class WandbBackend:
    """One W&B run (``wandb.init`` with a fixed id, so ``--resume`` continues it).

    Args:
        project: the W&B project.
        run_name: the run's display name.
        params: the config, logged as the run's config.
        run_id: the run's id (made up front, so it is known before any server answers).
        directory: where W&B keeps its files (``OUTPUT_DIR``; offline runs stay there under
            ``wandb/`` until ``wandb sync``).
        mode: "online", "offline" or "" (``WANDB_MODE``, else online).
        resumed_at: the iteration a resumed run continues at (recorded in the summary).
    """

    name = "W&B"

    def __init__(
        self,
        *,
        project: str,
        run_name: str,
        params: Mapping[str, str],
        run_id: str,
        directory: str,
        mode: str = "",
        resumed_at: int | None = None,
    ) -> None:
        self.project = project
        self.run_name = run_name
        self.params = dict(params)
        self.run_id = run_id
        self.directory = directory
        self.mode = mode
        self.resumed_at = resumed_at
        self._run: Any = None

    @property
    def target(self) -> str:
        mode = self.mode or os.environ.get("WANDB_MODE", "online")
        return f"W&B project {self.project} ({mode})"

    def open(self) -> dict[str, Any]:
        import wandb

        self._run = wandb.init(
            project=self.project,
            name=self.run_name,
            id=self.run_id,
            resume="allow",
            dir=self.directory,
            mode=self.mode or None,
            config=self.params,
            # atrous logs to its own files; W&B must not wrap the process's console.
            settings=wandb.Settings(console="off", silent=True),
        )
        if self.resumed_at is not None:
            self._run.summary["atrous_resumed_at"] = self.resumed_at
        return {"run_id": self.run_id, "project": self.project, "mode": self.mode}

    def log_metrics(self, points: list[Point]) -> None:
        by_iter: dict[int, dict[str, float]] = collections.defaultdict(dict)
        for name, value, it, _ in points:
            by_iter[it][name] = value
        for it in sorted(by_iter):
            self._run.log(by_iter[it], step=it)

    def log_artifact(self, path: str, folder: str) -> None:
        # Copied into the run's files folder (offline: wandb/offline-run-*/files/, uploaded by
        # `wandb sync`): a copy, not a link to a file the next run in OUTPUT_DIR may replace.
        # As MLflow does: a folder's contents go to `folder`, a file into it.
        if os.path.isdir(path):
            target = os.path.join(self._run.dir, folder or os.path.basename(path))
            shutil.copytree(path, target, dirs_exist_ok=True)
            names = [os.path.join(root, n) for root, _, files in os.walk(target) for n in files]
        else:
            target = os.path.join(self._run.dir, folder, os.path.basename(path))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(path, target)
            names = [target]
        for name in names:
            self._run.save(name, base_path=self._run.dir, policy="now")

    def close(self, status: str) -> None:
        if status == "KILLED":
            self._run.mark_preempting()
        self._run.finish(exit_code=0 if status in ("FINISHED", "KILLED") else 1)
