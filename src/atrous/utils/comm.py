"""Helpers around `torch.distributed` that also work when no process group exists.

Every function degrades to the single-process answer when `torch.distributed` is unavailable or
not initialised, so library code can call them unconditionally.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_object",
    "all_reduce_sum",
    "collective_device",
    "default_backend",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "is_main_process",
    "synchronize",
]

_LOCAL_RANK = 0


def default_backend(device: str | None = None) -> str:
    """The process-group backend for a model on `device`: NCCL on CUDA, else gloo.

    Args:
        device: MODEL.DEVICE ("auto", "cuda", "cuda:1", "cpu"); None means "auto": NCCL
            whenever this torch sees a GPU.
    """
    from .devices import visible_gpu_count

    kind = str(device or "auto").strip().partition(":")[0]
    return "nccl" if kind in ("auto", "cuda") and visible_gpu_count() > 0 else "gloo"


def collective_device() -> torch.device:
    """Where a tensor must live for the current process group's collectives.

    NCCL reduces CUDA tensors only (on this process's current device), gloo CPU tensors; without
    a process group the CPU.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def is_distributed() -> bool:
    """True when a default process group with more than one rank exists."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def set_local_rank(local_rank: int) -> None:
    """Record this process's rank within its machine (set by the launcher)."""
    global _LOCAL_RANK
    _LOCAL_RANK = local_rank


def get_local_rank() -> int:
    return _LOCAL_RANK


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all ranks; a no-op in a single process."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place and return it (no gradient)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj: Any) -> list[Any]:
    """Gather a picklable object from every rank; returns a list ordered by rank."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
