"""benchmarks/gpu_check.py runs end to end on the CPU (--device cpu --tiny), as CI runs it."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import FIXTURE_REFERENCE_DIR, REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"

EXPECTED_ROWS = [
    "1 fp32 logits vs detectron2 CPU reference",
    "2 train fp32 SyncBN",
    "2 train AMP bf16 SyncBN",
    "2 train AMP fp16 SyncBN + GradScaler",
    "3 channels_last fp32 vs eager",
    "3 compile fp32 vs eager",
    "3 bf16 fast path (channels_last, folded BN) vs fp32",
    "3 bf16 fast path + compile vs fp32",
    "4 optimizer holds every trainable parameter after the SyncBN conversion (R103)",
    "4 train_net.py on the device vs the CPU (loss curve)",
    "4 train_net.py --resume from the half-way checkpoint",
    "4 train_net.py --num-gpus 2 vs one process (SyncBN, DDP)",
    "4 SyncBN statistics: 2 ranks vs 1 process with the doubled batch",
    "5 infer fp32 b1 64x128",
    "5 infer fp32 b4 64x128",
    "5 infer bf16 b1 64x128",
    "5 infer bf16 b4 64x128",
    "5 train fp32 b2 64x128",
    "5 train AMP bf16 + channels_last b2 64x128",
    "5 infer bf16 + compile b1 64x128",
    "5 infer bf16 + compile b4 64x128",
]
FIGURE_FIELDS = {
    "images_per_s",
    "latency_p50_ms",
    "latency_p90_ms",
    "peak_memory_bytes",
    "peak_memory_kind",
    "flops_per_iter",
    "achieved_tflops_per_s",
    "mfu",
    "warmup_s",
    "batch",
    "size",
    "dtype",
}


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), **(env or {})}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=600,
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    # A budget no CI machine reaches: the rows that run are what is tested here, not the budget
    # (that is the last test's), and test workers share two cores.
    proc = run_check(
        "--peak-tflops", "1", "--peak-tflops-fp32", "0.5", "--budget-s", "3600", "--json", str(out)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


@pytest.mark.slow
def test_every_row_passes_or_is_an_explained_skip(tiny_run):
    proc, report = tiny_run
    rows = report["rows"]
    assert [r["name"] for r in rows] == EXPECTED_ROWS
    for row in rows:
        assert row["status"] in ("PASS", "SKIP"), row
        if row["status"] == "SKIP":
            # On the CPU only the compiled rows are skipped by default, and they say why.
            assert "compile" in row["name"] and "--compile" in row["note"], row
        # The printed table has the row with the same status.
        lines = proc.stdout.splitlines()
        assert any(row["name"] in line and row["status"] in line for line in lines), row
    assert report["passed"] is True and report["tiny"] is True and report["compile"] is False
    assert report["device"] == "cpu" and report["torch_version"] and report["hardware"]
    assert report["elapsed_s"] > 0 and report["plan"]["train_batch"] == 2


@pytest.mark.slow
def test_json_holds_the_measurements(tiny_run):
    _, report = tiny_run
    rows = {r["name"]: r for r in report["rows"]}
    parity = rows["1 fp32 logits vs detectron2 CPU reference"]["data"]
    assert parity["max_abs_diff"] <= parity["atol"] == 1e-3
    for name in EXPECTED_ROWS[1:4]:
        data = rows[name]["data"]
        losses = data["losses"]
        assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
        assert losses[-1] < losses[0]
        assert data["group_backend"] == "gloo" and "NaiveSyncBatchNorm" in data["sync_bn"]
    assert rows[EXPECTED_ROWS[3]]["data"]["final_loss_scale"] > 0
    assert rows["3 channels_last fp32 vs eager"]["data"]["max_abs_diff"] <= 1e-3
    for name in EXPECTED_ROWS[13:19]:
        data = rows[name]["data"]
        assert FIGURE_FIELDS <= set(data), name
        assert data["images_per_s"] > 0 and data["flops_per_iter"] > 0
        assert data["mfu"] == pytest.approx(
            data["achieved_tflops_per_s"] / (0.5 if data["dtype"] == "float32" else 1.0)
        )
    # Check 4: the seed's training command, end to end in processes of its own.
    assert rows[EXPECTED_ROWS[8]]["data"]["trainable_parameters"] > 300
    curve = rows[EXPECTED_ROWS[9]]["data"]
    assert len(curve["losses"]) == 8 and curve["max_rel_diff"] <= 0.02
    assert rows[EXPECTED_ROWS[10]]["data"]["relative_weight_difference"] <= 1e-3
    assert len(rows[EXPECTED_ROWS[11]]["data"]["losses"]) == 8
    assert rows[EXPECTED_ROWS[12]]["note"] == "gloo, NaiveSyncBatchNorm"
    train = rows["5 train fp32 b2 64x128"]["data"]
    # A training step is a forward and a backward: about three forwards' worth of FLOPs.
    assert 2.0 < train["extra"]["train_to_forward_flops"] < 3.5
    assert train["mode"] == "train" and train["batch"] == 2 and train["size"] == [64, 128]


@pytest.mark.slow
def test_missing_reference_files_stop_the_run_with_status_2(tmp_path):
    proc = run_check(env={"ATROUS_REFERENCE_DIR": str(tmp_path)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "reference outputs are missing" in proc.stderr and str(tmp_path) in proc.stderr


@pytest.mark.slow
def test_cuda_without_a_gpu_stops_with_status_2():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cuda"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "CUDA_VISIBLE_DEVICES": ""},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "sees no GPU" in proc.stderr and "--device cpu --tiny" in proc.stderr


@pytest.mark.slow
def test_a_failing_check_makes_the_exit_status_1(tmp_path):
    # A copy of the reference files whose logits are off by 1e-2: the parity row must fail.
    reference = tmp_path / "reference"
    shutil.copytree(FIXTURE_REFERENCE_DIR, reference)
    logits = reference / "small_v3plus_nocrop__128x256__logits.npy"
    np.save(logits, np.load(logits) + np.float32(1e-2))
    proc = run_check("--budget-s", "0", env={"ATROUS_REFERENCE_DIR": str(reference)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    parity = next(line for line in proc.stdout.splitlines() if line.startswith("1 fp32"))
    assert "FAIL" in parity and "1.00e-02" in parity
    # A budget of 0 s runs the parity check only; every other row is skipped and says why.
    others = [line for line in proc.stdout.splitlines() if line[:2] in ("2 ", "3 ", "4 ", "5 ")]
    assert len(others) == len(EXPECTED_ROWS) - 1
    assert all("SKIP" in line and "--budget-s" in line for line in others)


def test_reference_helpers_load_without_the_test_suite(tmp_path):
    # The script reads tests/helpers.py by its path: the checkout is not put on sys.path, so no
    # conftest (with its fixtures and their imports) comes along.
    code = (
        "import runpy, sys\n"
        f"script = runpy.run_path({str(SCRIPT)!r}, run_name='gpu_check_module')\n"
        "before = list(sys.path)\n"
        "helpers = script['load_reference_helpers']()\n"
        "assert helpers.V3PLUS_CONFIG.is_file() and helpers.SMALL_REFERENCE_OVERRIDES\n"
        "assert sys.path == before, sys.path\n"
        "assert not [m for m in sys.modules if m == 'tests' or m.startswith('tests.')]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
