"""Experiment tracking end to end: `atrous train` against a real MLflow tracking server on
127.0.0.1 (params, metrics and artifacts read back with mlflow's client), SIGTERM then --resume
continuing the same run, and W&B in offline mode (its run file read back record by record).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from atrous.engine.tracking import config_params
from atrous.engine.tracking_backends import mlflow_metric_name
from tests.engine.mlflow_server import MlflowServer, json_histories, metric_histories
from tests.helpers import QUICKSTART, TINY, training_env, wait_for_iteration
from tests.helpers import REPO_ROOT as REPO

pytestmark = pytest.mark.slow

# A run with evaluations (after iterations 2 and 5, and the final one recorded at 8), a best
# checkpoint, and every iteration logged.
OPTS = [
    "DATASETS.TEST", "('synthetic_sem_seg_val',)", "TEST.EVAL_PERIOD", "3",
    "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "100",
    "SOLVER.BEST_CHECKPOINT.METRIC", "sem_seg/mIoU",
    "TRACKING.BACKENDS", "['tensorboard', 'mlflow']",
]  # fmt: skip


@pytest.fixture(scope="module")
def datasets_dir(synthetic_cityscapes_root: Path) -> Path:
    """The folder for $ATROUS_DATASETS (it holds ``synthetic/``)."""
    return synthetic_cityscapes_root.parent


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


def _command(out: Path, server: MlflowServer, project: str, *flags: str) -> list[str]:
    return [sys.executable, str(REPO / "train_net.py"), *flags, "--config-file", str(QUICKSTART),
            *TINY, "OUTPUT_DIR", str(out), *OPTS, "TRACKING.MLFLOW_URI", server.uri,
            "TRACKING.PROJECT", project]  # fmt: skip


def _train(datasets_dir: Path, cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=REPO, env=training_env(datasets_dir), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _run_id(out: Path) -> str:
    return json.loads((out / "tracking.json").read_text())["mlflow"]["run_id"]


def _resolved_params(out: Path) -> dict[str, str]:
    from atrous.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(out / "config.yaml"))
    return config_params(cfg)


def _assert_metrics_match(client, run_id: str, out: Path) -> dict[str, list]:
    """Every scalar of metrics.json, at its iterations and nothing else, is in the run."""
    expected = json_histories(out / "metrics.json")
    logged = client.get_run(run_id).data.metrics
    assert set(logged) == {mlflow_metric_name(k) for k in expected}
    tracked = metric_histories(client, run_id, [mlflow_metric_name(k) for k in expected])
    for key, points in expected.items():
        got = tracked[mlflow_metric_name(key)]
        assert [s for s, _ in got] == [s for s, _ in points], key
        assert [v for _, v in got] == pytest.approx([v for _, v in points], nan_ok=True), key
    return expected


def test_training_run_is_tracked_and_reads_back(
    datasets_dir: Path, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _train(datasets_dir, _command(out, mlflow_server, "complete"))
    assert "not delivered" not in proc.stdout + proc.stderr
    client = mlflow_server.client()
    run_id = _run_id(out)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "run"
    experiment = client.get_experiment_by_name("complete")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]

    # The resolved config, every key, as parameters.
    params = run.data.params
    assert params == _resolved_params(out)
    assert params["SOLVER.MAX_ITER"] == "8"
    assert params["SOLVER.BEST_CHECKPOINT.METRIC"] == "sem_seg/mIoU"

    expected = _assert_metrics_match(client, run_id, out)
    assert [s for s, _ in expected["total_loss"]] == list(range(8))
    assert [s for s, _ in expected["sem_seg/mIoU"]] == [2, 5, 8]

    root = {a.path for a in client.list_artifacts(run_id)}
    assert root >= {
        "metrics.json", "training_curves.png", "config.yaml", "model_best.json", "log.txt",
        "model_bundle", "report",
    }  # fmt: skip
    report = {a.path for a in client.list_artifacts(run_id, "report/synthetic_sem_seg_val")}
    assert "report/synthetic_sem_seg_val/report.html" in report
    bundle = {a.path for a in client.list_artifacts(run_id, "model_bundle")}
    assert {"model_bundle/bundle.json", "model_bundle/model.safetensors"} <= bundle
    local = client.download_artifacts(run_id, "metrics.json", str(tmp_path))
    assert Path(local).read_bytes() == (out / "metrics.json").read_bytes()
    # The bundle holds the best checkpoint, and says so in the log.
    assert (
        "Model bundle for the trackers written from model_best.pth" in (out / "log.txt").read_text()
    )


def test_sigterm_then_resume_continues_one_run_without_gaps_or_repeats(
    datasets_dir: Path, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cmd = _command(out, mlflow_server, "resumed")
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=training_env(datasets_dir), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for_iteration(out, 3, [proc])
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stdout[-2000:] + stderr[-2000:]
    stopped_at = max(json.loads(x)["iteration"] for x in (out / "metrics.json").open())
    assert stopped_at < 7
    client = mlflow_server.client()
    run_id = _run_id(out)
    assert client.get_run(run_id).info.status == "KILLED"
    _assert_metrics_match(client, run_id, out)

    _train(datasets_dir, _command(out, mlflow_server, "resumed", "--resume"))
    assert _run_id(out) == run_id
    experiment = client.get_experiment_by_name("resumed")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[f"atrous.resumed_at.{stopped_at + 1}"] == "true"
    # One point per iteration, each once, matching metrics.json (rewritten by the resumed run).
    expected = _assert_metrics_match(client, run_id, out)
    assert [s for s, _ in expected["total_loss"]] == list(range(8))
    assert [s for s, _ in expected["sem_seg/mIoU"]] == [2, 5, 8]
    assert "metrics.json" in {a.path for a in client.list_artifacts(run_id)}


# -- W&B, offline -------------------------------------------------------------------------------


def _wandb_records(path: Path) -> list:
    """The records of a ``run-<id>.wandb`` file: W&B's LevelDB-style log of protobuf records
    (a 7-byte ``:W&B`` header, then 32 KiB blocks of chunks with a 7-byte header each)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the tail of a block too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _wandb_history(records) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            if key.startswith("_"):
                continue
            value = json.loads(item.value_json)  # NaN is written as NaN, which Python reads
            out.setdefault(key, []).append((record.history.step.num, value))
    return out


def test_wandb_offline_run_files_hold_config_metrics_and_artifacts(
    datasets_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    home = tmp_path / "wandb-home"
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file", str(QUICKSTART), *TINY,
           "OUTPUT_DIR", str(out), *OPTS, "TRACKING.BACKENDS", "['wandb']",
           "TRACKING.WANDB_MODE", "offline", "TRACKING.PROJECT", "offline-test"]  # fmt: skip
    env = training_env(
        datasets_dir,
        WANDB_CONFIG_DIR=str(home / "config"),
        WANDB_CACHE_DIR=str(home / "cache"),
        WANDB_DATA_DIR=str(home / "data"),
    )
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "not delivered" not in proc.stdout + proc.stderr
    assert not list(out.glob("events.out.tfevents.*"))  # TensorBoard is off when not listed
    run_id = json.loads((out / "tracking.json").read_text())["wandb"]["run_id"]
    (run_dir,) = (Path(p) for p in glob.glob(str(out / "wandb" / f"offline-run-*-{run_id}")))
    records = _wandb_records(run_dir / f"run-{run_id}.wandb")

    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_id == run_id and run.project == "offline-test" and run.display_name == "run"
    config = {i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"}
    assert config == _resolved_params(out)

    history = _wandb_history(records)
    expected = json_histories(out / "metrics.json")
    assert set(history) == set(expected)
    for key, points in expected.items():
        assert [s for s, _ in history[key]] == [s for s, _ in points], key
        got = [v for _, v in history[key]]
        assert got == pytest.approx([v for _, v in points], nan_ok=True), key

    files = run_dir / "files"
    assert (files / "metrics.json").read_bytes() == (out / "metrics.json").read_bytes()
    for name in ("training_curves.png", "config.yaml", "model_best.json", "log.txt"):
        assert (files / name).is_file(), name
    assert (files / "model_bundle" / "bundle.json").is_file()
    assert os.path.isfile(files / "report" / "synthetic_sem_seg_val" / "report.html")
