"""Which device a process computes on: MODEL.DEVICE, the visible GPUs and the process's place.

detectron2 runs on CUDA by default, one GPU per process. atrous does the same wherever a GPU is
visible and falls back to the CPU elsewhere, so the seed's commands work verbatim on both kinds
of machine:

* ``MODEL.DEVICE auto`` (the default): CUDA when this torch sees a GPU, else the CPU (said once
  in the log);
* ``cpu``: the CPU, even on a GPU machine;
* ``cuda``: a GPU, an error without one; in a multi-process run each process takes the GPU of
  its local rank (`gpu_index_for_process`);
* ``cuda:N``: GPU N, for a single process; refused with several processes per machine, which
  would all land on GPU N.

The decisions are plain functions of the requested value, the number of visible GPUs and the
process's local rank, so that every branch is tested on machines without a GPU; only
`visible_gpu_count` and `resolve_device` ask torch.
"""

from __future__ import annotations

import logging

import torch

__all__ = [
    "AUTO",
    "FLOAT32_PRECISIONS",
    "DeviceError",
    "apply_float32_precision",
    "check_num_gpus",
    "choose_device",
    "gpu_index_for_process",
    "pin_memory_for",
    "resolve_device",
    "visible_gpu_count",
]

logger = logging.getLogger(__name__)

AUTO = "auto"
_FORMS = "'auto', 'cpu', 'cuda' or 'cuda:N'"
_said_cpu_fallback = False


class DeviceError(ValueError):
    """A device request that this machine or this process layout cannot honour."""


def visible_gpu_count() -> int:
    """GPUs this torch can use (after CUDA_VISIBLE_DEVICES); 0 for a CPU-only build."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _parse(requested: object) -> tuple[str, int | None]:
    if not isinstance(requested, str):
        raise DeviceError(f"MODEL.DEVICE must be {_FORMS}, got {requested!r}.")
    kind, colon, index = requested.strip().partition(":")
    if kind in (AUTO, "cpu") and not colon:
        return kind, None
    if kind == "cuda" and not colon:
        return kind, None
    if kind == "cuda" and index.isdigit():
        return kind, int(index)
    raise DeviceError(f"MODEL.DEVICE must be {_FORMS}, got {requested!r}.")


def choose_device(requested: object, *, cuda_count: int, processes_per_machine: int = 1) -> str:
    """The device a process computes on, as ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    ``"cuda"`` means the process's current CUDA device, which the launcher sets to the GPU of its
    local rank (`gpu_index_for_process`).

    Args:
        requested: MODEL.DEVICE (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        cuda_count: GPUs visible to this process (`visible_gpu_count`).
        processes_per_machine: processes of the run on this machine (``--num-gpus``, torchrun's
            ``--nproc-per-node``); 1 for a single process.

    Raises:
        DeviceError: a malformed value, CUDA asked for without a GPU, a GPU index that is not
            visible, or ``cuda:N`` with several processes per machine.
    """
    kind, index = _parse(requested)
    if kind == AUTO:
        return "cuda" if cuda_count > 0 else "cpu"
    if kind == "cpu":
        return "cpu"
    if cuda_count < 1:
        raise DeviceError(
            f"MODEL.DEVICE is {requested!r} but this PyTorch ({torch.__version__}) sees no CUDA "
            "device: pass MODEL.DEVICE cpu (or auto), or install a CUDA build of torch on a GPU "
            "machine."
        )
    if index is None:
        return "cuda"
    if processes_per_machine > 1:
        raise DeviceError(
            f"MODEL.DEVICE is {requested!r}, which would put all {processes_per_machine} "
            "processes of this machine on one GPU: use MODEL.DEVICE cuda (each process then "
            "takes the GPU of its local rank) and choose the GPUs with CUDA_VISIBLE_DEVICES."
        )
    if index >= cuda_count:
        raise DeviceError(
            f"MODEL.DEVICE is {requested!r} but only {cuda_count} CUDA device(s) are visible: "
            f"pick one in 0..{cuda_count - 1} or check CUDA_VISIBLE_DEVICES."
        )
    return f"cuda:{index}"


def check_num_gpus(num_gpus: int, *, device: str, cuda_count: int) -> None:
    """Refuse ``--num-gpus N`` on CUDA when fewer than N GPUs are visible, before spawning.

    Args:
        num_gpus: processes per machine the command line asks for.
        device: the chosen device (`choose_device`); on the CPU any count is allowed (the
            processes share the cores).
        cuda_count: visible GPUs.

    Raises:
        DeviceError: more processes than visible GPUs on CUDA.
    """
    if device.startswith("cuda") and num_gpus > cuda_count:
        raise DeviceError(
            f"--num-gpus {num_gpus} asks for one GPU per process, but only {cuda_count} are "
            f"visible: pass --num-gpus {cuda_count} or fewer (and scale SOLVER.IMS_PER_BATCH and "
            "SOLVER.BASE_LR with it), or check CUDA_VISIBLE_DEVICES."
        )


def gpu_index_for_process(
    *,
    local_rank: int | None,
    local_world_size: int | None,
    visible: int,
    per_process_binding: bool = False,
) -> int:
    """The CUDA device index a process of a multi-process run trains on.

    Every process uses one GPU. Where the launcher gives each process only its own GPU (SLURM
    with ``--gpus-per-task=1`` or ``--gpu-bind``, a wrapper that sets CUDA_VISIBLE_DEVICES per
    process) the process sees one device and takes it whatever its local rank; otherwise the
    processes of a machine share its visible GPUs and process ``local_rank`` takes GPU
    ``local_rank``.

    Args:
        local_rank: the process's rank on its machine; None when the launcher did not say.
        local_world_size: processes on this machine, when known.
        visible: GPUs this process sees.
        per_process_binding: the launcher may bind GPUs per process (SLURM); then one visible
            GPU with several processes per machine is that binding, not a shared GPU.

    Raises:
        DeviceError: no visible GPU, an unknown local rank with several GPUs visible, more
            processes on this machine than GPUs, or a local rank without a GPU.
    """
    if visible < 1:
        raise DeviceError("This process sees no CUDA device; check CUDA_VISIBLE_DEVICES.")
    shared = local_world_size is not None and local_world_size > 1
    if visible == 1 and (per_process_binding or not shared):
        return 0
    if local_rank is None:
        raise DeviceError(
            f"This process sees {visible} GPUs but its launcher did not set LOCAL_RANK, so it "
            "cannot tell which one is its own: set LOCAL_RANK (torchrun does), or give each "
            "process one GPU through CUDA_VISIBLE_DEVICES."
        )
    if local_world_size is not None and local_world_size > visible:
        raise DeviceError(
            f"{local_world_size} processes run on this machine but only {visible} GPU(s) are "
            "visible: start at most one process per GPU (torchrun --nproc-per-node, srun "
            "--ntasks-per-node) or bind one GPU per task (srun --gpus-per-task=1)."
        )
    if local_rank >= visible:
        raise DeviceError(
            f"Local rank {local_rank} has no GPU: only {visible} visible. Start fewer processes "
            "per machine or check CUDA_VISIBLE_DEVICES."
        )
    return local_rank


def resolve_device(requested: object) -> torch.device:
    """MODEL.DEVICE as the `torch.device` this process computes on.

    ``auto`` without a GPU says once per process, in the log, that the run uses the CPU.

    Raises:
        DeviceError: as `choose_device` (for a single process).
    """
    global _said_cpu_fallback
    chosen = choose_device(requested, cuda_count=visible_gpu_count())
    if chosen == "cpu" and str(requested).strip() == AUTO and not _said_cpu_fallback:
        _said_cpu_fallback = True
        logger.info(
            "No CUDA device is visible: running on the CPU (MODEL.DEVICE auto; pass "
            "MODEL.DEVICE cuda to require a GPU)."
        )
    return torch.device(chosen)


def pin_memory_for(device: torch.device | str) -> bool:
    """Whether data loaders feeding `device` should pin their batches in page-locked memory.

    Pinned host memory lets the copies to a GPU (``non_blocking=True``) run asynchronously; on
    the CPU it only costs time.
    """
    return torch.device(device).type == "cuda"


# FLOAT32_PRECISION values, as in detectron2: torch.set_float32_matmul_precision's levels, or ""
# to leave PyTorch's defaults alone.
FLOAT32_PRECISIONS = ("", "highest", "high", "medium")


def apply_float32_precision(precision: str) -> None:
    """Set how float32 matrix products and cuDNN convolutions may compute (FLOAT32_PRECISION).

    ``highest``: full IEEE float32 everywhere (what the CPU parity tests use; TF32 off for cuDNN
    convolutions too, which PyTorch otherwise allows by default). ``high``: TF32 on Ampere and
    newer GPUs for products and convolutions, about 2x faster fp32 training at a 10-bit mantissa.
    ``medium``: also bfloat16 internals. ``""``: PyTorch's defaults (TF32 convolutions, IEEE
    products). Set once per process; it applies to every model of the process.

    Raises:
        DeviceError: a value not in `FLOAT32_PRECISIONS`.
    """
    if precision not in FLOAT32_PRECISIONS:
        shown = ", ".join(repr(p) for p in FLOAT32_PRECISIONS)
        raise DeviceError(f"FLOAT32_PRECISION is {precision!r}; it must be one of {shown}.")
    if not precision:
        return
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = precision != "highest"
