"""A real MLflow tracking server on 127.0.0.1 for the tracking tests (one per test module).

`mlflow server` with a SQLite store and served artifacts in a temporary folder, on a free port;
the server's own start takes tens of seconds (it migrates its database), so each module starts
one and shares it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

STARTUP_TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` as a child process; `uri` is its address, `store` its SQLite URI."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.store = f"sqlite:///{folder / 'mlflow.db'}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        exe = Path(sys.executable).with_name("mlflow")
        command = [str(exe) if exe.exists() else shutil.which("mlflow") or "mlflow"]
        command += [
            "server",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--backend-store-uri", self.store,
            "--artifacts-destination", str(self.folder / "artifacts"),
            "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - the server's lifetime
        # A session of its own: stopping the server stops its uvicorn worker too.
        self.proc = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(self.folder / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        pytest.fail("mlflow server did not answer /health in time")

    def stop(self, *, at_once: bool = False) -> None:
        """Shut the server down; `at_once` kills it (SIGKILL), as a crash or an outage would,
        instead of a graceful shutdown that keeps serving open connections for a while."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL if at_once else signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)


def metric_histories(client, run_id: str, names) -> dict[str, list[tuple[int, float]]]:
    """``{name: [(step, value), ...]}`` as the tracking server has them, in step order."""
    return {
        name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        for name in names
    }


def json_histories(metrics_json: Path) -> dict[str, list[tuple[int, float]]]:
    """The same from a metrics.json (its nulls are the run's NaN, e.g. absent classes)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in metrics_json.read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key != "iteration":
                value = float("nan") if value is None else value
                out.setdefault(key, []).append((record["iteration"], value))
    return out
