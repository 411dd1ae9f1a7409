"""Timing, percentile, peak-memory and JSON helpers behind `atrous benchmark`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from atrous.utils.timing import (
    BenchmarkResult,
    percentile,
    time_iterations,
    write_json,
)


def test_percentile_interpolates():
    assert percentile([3.0], 90) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)


def test_time_iterations_runs_warmup_then_timed_steps():
    calls = []
    times, warmup_s = time_iterations(
        lambda: calls.append(1), warmup=2, iters=3, device=torch.device("cpu")
    )
    assert len(calls) == 5 and len(times) == 3 and warmup_s >= 0
    with pytest.raises(ValueError, match="--iters"):
        time_iterations(lambda: None, warmup=0, iters=0, device=torch.device("cpu"))


_PEAK_RSS_WINDOW = """
import torch
from atrous.utils.timing import peak_memory, reset_peak_memory

cpu = torch.device("cpu")
reset_peak_memory(cpu)
before, kind = peak_memory(cpu)
block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
after, _ = peak_memory(cpu)
del block
assert kind == "peak_rss", kind
assert after - before >= 60 * 2**20, (before, after)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux /proc needed")
def test_peak_rss_window_sees_a_new_allocation():
    # A fresh process: in a long-lived test worker the allocator may hand out pages that an
    # earlier test freed but that are still resident, so RSS (and its peak) would not grow.
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_WINDOW], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_result_summary_and_atomic_json(tmp_path):
    result = BenchmarkResult.from_times(
        [0.2, 0.1, 0.3],
        batch=2,
        flops_per_iter=10**12,
        peak_tflops_per_s=100.0,
        mode="infer", config_file="c.yaml", size=(64, 128), dtype="bf16", channels_last=True,
        compile=False, fold_bn=True, runtime="pytorch", device="cpu", hardware="cpu",
        threads=2, torch_version=torch.__version__, warmup=1, iters=3, warmup_s=0.5,
        peak_memory_bytes=2**30, peak_memory_kind="peak_rss", parameters=1000,
    )  # fmt: skip
    assert result.latency_p50_ms == pytest.approx(200.0)
    assert result.images_per_s == pytest.approx(2 / 0.2)
    assert result.achieved_tflops_per_s == pytest.approx(5.0)
    assert result.mfu == pytest.approx(0.05)
    assert "5.0% (MFU)" in result.summary() and "1.00 GiB" in result.summary()

    path = write_json(result.to_dict(), tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text())["size"] == [64, 128]
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # readable by others, not mkstemp's 0600


def test_the_machine_is_named_in_one_place():
    from atrous.utils.timing import cpu_name, hardware_name

    name = cpu_name()
    assert name and "\n" not in name
    assert hardware_name(torch.device("cpu")) == f"{name} ({torch.get_num_threads()} threads)"
