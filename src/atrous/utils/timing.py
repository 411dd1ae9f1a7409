"""Timing and memory measurement of inference and training steps, and the machine's name.

Used by `atrous benchmark` (all its modes, the data pipeline's included) and the GPU check;
every figure in docs/benchmarks.md comes from here. Latencies are
wall-clock per iteration after warm-up (CUDA work is synchronised before the clock is read), so
they include everything a user waits for: preprocessing, the network, post-processing.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from atrous.utils.file_io import atomic_write_text

__all__ = [
    "BenchmarkResult",
    "cpu_name",
    "hardware_name",
    "peak_memory",
    "percentile",
    "random_batch",
    "reset_peak_memory",
    "time_iterations",
    "write_json",
]


def random_batch(
    batch: int, size: tuple[int, int], *, num_classes: int | None = None, ignore_value: int = 255
) -> list[dict[str, Any]]:
    """`batch` seeded random inputs in the segmentor's format: ``image`` uint8 (3, H, W).

    With `num_classes`, each also gets a training label ``sem_seg`` int64 (H, W), about 5% of it
    `ignore_value`, so that a timed training step sees ignored pixels as real data has them.
    """
    generator = torch.Generator().manual_seed(0)
    h, w = size
    items = []
    for _ in range(batch):
        item: dict[str, Any] = {
            "image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator),
            "height": h,
            "width": w,
        }
        if num_classes is not None:
            sem_seg = torch.randint(0, num_classes, (h, w), generator=generator)
            sem_seg[torch.rand(h, w, generator=generator) < 0.05] = ignore_value
            item["sem_seg"] = sem_seg
        items.append(item)
    return items


def cpu_name() -> str:
    """The CPU model, e.g. "AMD EPYC 9B45" (Linux' /proc/cpuinfo, else what `platform` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_name(device: torch.device) -> str:
    """ "NVIDIA H100 80GB HBM3", "AMD EPYC (2 threads)" and the like."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def _read_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak-memory window. Returns False where the OS keeps only a lifetime peak.

    CUDA: `torch.cuda.reset_peak_memory_stats`. CPU: writing "5" to /proc/self/clear_refs resets
    the kernel's peak RSS (VmHWM) to the current RSS (Linux 4.0+).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(device: torch.device) -> tuple[int | None, str]:
    """(bytes, what was measured): max allocated on CUDA, peak resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    kib = _read_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024, "peak_rss"
    try:
        import resource

        # ru_maxrss is KiB on Linux; lifetime peak only.
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "peak_rss"
    except (ImportError, OSError):
        return None, "unavailable"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(
    step: Callable[[], Any], *, warmup: int, iters: int, device: torch.device
) -> tuple[list[float], float]:
    """Run `step` `warmup` times untimed, then `iters` times timed.

    Returns:
        Per-iteration wall-clock seconds, and the seconds the warm-up took (this includes
        `torch.compile`'s compilation when compiling).
    """
    if iters < 1:
        raise ValueError(f"--iters must be at least 1, got {iters}.")
    start = time.perf_counter()
    for _ in range(max(warmup, 0)):
        step()
    _synchronize(device)
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        _synchronize(device)
        times.append(time.perf_counter() - t0)
    return times, warmup_s


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class BenchmarkResult:
    """Everything `atrous benchmark` prints, in the units of the field names."""

    mode: str
    config_file: str
    size: tuple[int, int]
    batch: int
    dtype: str
    channels_last: bool
    compile: bool
    fold_bn: bool
    runtime: str
    device: str
    hardware: str
    threads: int
    torch_version: str
    warmup: int
    iters: int
    latencies_s: list[float]
    warmup_s: float
    images_per_s: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_mean_ms: float
    peak_memory_bytes: int | None
    peak_memory_kind: str
    parameters: int | None
    flops_per_iter: int | None
    achieved_tflops_per_s: float | None = None
    peak_tflops_per_s: float | None = None
    mfu: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    backend: str = "torch"
    int8: bool = False
    exported_file: str | None = None

    @classmethod
    def from_times(
        cls, times: list[float], *, batch: int, flops_per_iter: int | None, **kwargs: Any
    ) -> BenchmarkResult:
        p50 = statistics.median(times)
        mean = sum(times) / len(times)
        achieved = None if flops_per_iter is None else flops_per_iter / p50 / 1e12
        peak = kwargs.pop("peak_tflops_per_s", None)
        return cls(
            latencies_s=list(times),
            batch=batch,
            images_per_s=batch / mean,
            latency_p50_ms=p50 * 1e3,
            latency_p90_ms=percentile(times, 90) * 1e3,
            latency_mean_ms=mean * 1e3,
            flops_per_iter=flops_per_iter,
            achieved_tflops_per_s=achieved,
            peak_tflops_per_s=peak,
            mfu=None if (achieved is None or not peak) else achieved / peak,
            **kwargs,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["size"] = list(self.size)
        return data

    def summary(self) -> str:
        """A few human-readable lines."""
        h, w = self.size
        mem = (
            "n/a"
            if self.peak_memory_bytes is None
            else f"{self.peak_memory_bytes / 2**30:.2f} GiB ({self.peak_memory_kind})"
        )
        flops = "n/a" if self.flops_per_iter is None else f"{self.flops_per_iter / 1e9:.1f} GFLOP"
        params = "n/a" if self.parameters is None else f"{self.parameters / 1e6:.2f} M"
        lines = [
            f"mode={self.mode} size={h}x{w} batch={self.batch} dtype={self.dtype} "
            f"channels_last={self.channels_last} compile={self.compile} fold_bn={self.fold_bn} "
            f"backend={self.backend}{' int8' if self.int8 else ''} runtime={self.runtime}",
            f"hardware: {self.hardware} | torch {self.torch_version}",
            f"images/s: {self.images_per_s:.3f}",
            f"latency p50: {self.latency_p50_ms:.1f} ms  p90: {self.latency_p90_ms:.1f} ms  "
            f"(mean {self.latency_mean_ms:.1f} ms over {self.iters} iters, warm-up "
            f"{self.warmup_s:.1f} s for {self.warmup})",
            f"peak memory: {mem}",
            f"parameters: {params}",
            f"FLOPs per iteration: {flops}",
        ]
        if self.achieved_tflops_per_s is not None:
            line = f"achieved: {1e3 * self.achieved_tflops_per_s:.1f} GFLOP/s"
            if self.mfu is not None:
                line += (
                    f" = {100 * self.mfu:.1f}% (MFU) of {self.peak_tflops_per_s:.0f} TFLOP/s peak"
                )
            lines.append(line)
        return "\n".join(lines)


def write_json(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `data` as indented JSON atomically (temporary file, fsync, rename)."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")
