"""Start one training process per device, on one or several machines.

Three ways in, one code path for the training function:

* ``--num-gpus N`` (N > 1) spawns N local processes (NCCL on CUDA, gloo on CPU, where each
  process stands for a "GPU" and gets its share of the cores);
* ``--num-machines M --machine-rank R --dist-url tcp://HOST:PORT`` does the same on each of M
  machines;
* under ``torchrun`` (or SLURM wrappers that set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), the
  already-started process joins the group through the ``env://`` rendezvous;
* under ``srun`` with one task per device (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``
  of a job step), the process joins the group at ``MASTER_ADDR:MASTER_PORT``, by default the
  first host of the step's node list and a port derived from ``SLURM_JOB_ID``.

The first that applies wins: torchrun's variables, then SLURM's, then the flags.

Stop signals (SIGTERM, SIGINT, SIGUSR1) that reach the spawning parent are relayed to its
processes through shared memory, so that ``kill PID`` or ``docker stop`` on the parent stops the
run as cleanly as Ctrl-C does (see `atrous.engine.preemption`).

Every process group gets a timeout, so when a rank dies the others fail with an error in bounded
time instead of waiting forever in a collective.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from atrous.utils import comm
from atrous.utils.comm import default_backend
from atrous.utils.devices import check_num_gpus, gpu_index_for_process, visible_gpu_count

from . import preemption
from .preemption import StopSignals, TrainingPreempted

__all__ = [
    "DEFAULT_TIMEOUT",
    "default_backend",
    "find_free_port",
    "launch",
    "parse_slurm_nodelist",
    "process_counts",
]

logger = logging.getLogger(__name__)

# Long enough for a slow evaluation on rank 0 while the others wait at a barrier; overridable
# with ATROUS_DIST_TIMEOUT (seconds) for clusters and tests.
DEFAULT_TIMEOUT = timedelta(minutes=30)


def _timeout_from_env(default: timedelta) -> timedelta:
    value = os.environ.get("ATROUS_DIST_TIMEOUT")
    if not value:
        return default
    try:
        return timedelta(seconds=float(value))
    except ValueError:
        raise ValueError(
            f"ATROUS_DIST_TIMEOUT must be a number of seconds, got {value!r}."
        ) from None


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Where launchers other than torchrun say which process of its machine this one is.
_LOCAL_RANK_KEYS = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
_LOCAL_SIZE_KEYS = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")


def _first_int(environ: Mapping[str, str], keys: Sequence[str]) -> int | None:
    for key in keys:
        value = environ.get(key, "").strip()
        if value.isdigit():
            return int(value)
    return None


def _torchrun_env(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Rank, world size, local rank and local world size of a process that torchrun (or
    another ``env://`` launcher setting ``RANK``/``WORLD_SIZE``) started; None otherwise.

    The local rank is None when the launcher did not set one: the global rank is not a
    substitute (it is wrong from the second machine on), and one is needed only to pick a GPU
    among several (`atrous.utils.devices.gpu_index_for_process`).
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    return {
        "rank": int(env["RANK"]),
        "world_size": int(env["WORLD_SIZE"]),
        "local_rank": _first_int(env, _LOCAL_RANK_KEYS),
        "local_world_size": _first_int(env, _LOCAL_SIZE_KEYS),
    }


def process_counts(
    num_gpus_per_machine: int, num_machines: int = 1, environ: Mapping[str, str] | None = None
) -> tuple[int, int]:
    """``(world_size, processes_per_machine)`` of the run `launch` will make.

    torchrun's or SLURM's variables when this process was started by one of them (then the
    flags are ignored, as in `launch`), else ``--num-gpus`` x ``--num-machines``. An unknown
    per-machine count (a launcher that does not say) is taken as 1.
    """
    _, place = _started_by(environ)
    if place is not None:
        return place["world_size"], place["local_world_size"] or 1
    return num_gpus_per_machine * num_machines, num_gpus_per_machine


def _started_by(
    environ: Mapping[str, str] | None = None,
) -> tuple[str, dict[str, Any]] | tuple[None, None]:
    """``("torchrun", _torchrun_env())`` or ``("slurm", _slurm_env())`` for a process such a
    launcher started as part of a group, else ``(None, None)``: then the flags decide.

    torchrun's variables win over SLURM's (torchrun inside an srun step); a torchrun world of
    one process is no group, and then SLURM's are not read either.
    """
    env = os.environ if environ is None else environ
    torchrun = _torchrun_env(env)
    if torchrun is not None:
        return ("torchrun", torchrun) if torchrun["world_size"] > 1 else (None, None)
    slurm = _slurm_env(env)
    return ("slurm", slurm) if slurm is not None else (None, None)


def parse_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM host list, e.g. ``node[01-03],gpu7`` -> node01, node02, node03, gpu7.

    Handles comma-separated entries, several bracket groups per entry (``r[1-2]n[1,3]``) and
    zero-padded ranges, as ``scontrol show hostnames`` does.

    Raises:
        ValueError: unbalanced brackets or a malformed range.
    """
    entries: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(nodelist):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            entries.append(nodelist[start:i])
            start = i + 1
        if depth not in (0, 1):
            break
    if depth != 0:
        raise ValueError(f"Unbalanced brackets in the SLURM node list {nodelist!r}.")
    entries.append(nodelist[start:])

    hosts: list[str] = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        names = [""]
        for literal, group in re.findall(r"([^\[\]]*)(?:\[([^\]]*)\])?", entry):
            names = [n + literal for n in names]
            if group:
                names = [n + suffix for n in names for suffix in _expand_range(group, nodelist)]
        hosts.extend(names)
    return hosts


def _expand_range(group: str, nodelist: str) -> list[str]:
    out: list[str] = []
    for part in group.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"Bad range [{group}] in the SLURM node list {nodelist!r}.")
        width = len(low)
        out.extend(f"{n:0{width}d}" for n in range(int(low), int(high or low) + 1))
    return out


def _slurm_env(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Rank, world size, local rank and rendezvous URL of a task of an ``srun`` job step.

    A step's tasks carry ``SLURM_STEP_ID``; the batch shell of ``sbatch`` (which has
    ``SLURM_NTASKS`` and ``SLURM_PROCID=0`` too but is one process) does not, and keeps using
    the flags.
    """
    env = os.environ if environ is None else environ
    if "SLURM_PROCID" not in env or "SLURM_STEP_ID" not in env:
        return None
    world_size = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    if world_size <= 1:
        return None
    addr = env.get("MASTER_ADDR")
    if not addr:
        nodelist = (
            env.get("SLURM_STEP_NODELIST")
            or env.get("SLURM_JOB_NODELIST")
            or env.get("SLURM_NODELIST")
        )
        if not nodelist:
            raise ValueError(
                "Under srun with SLURM_NTASKS > 1 but neither MASTER_ADDR nor "
                "SLURM_JOB_NODELIST is set: export MASTER_ADDR=<host of rank 0>."
            )
        addr = parse_slurm_nodelist(nodelist)[0]
    port = env.get("MASTER_PORT")
    if not port:
        if "SLURM_JOB_ID" not in env:
            raise ValueError("Under srun without MASTER_PORT or SLURM_JOB_ID: export MASTER_PORT.")
        # Every task computes the same port without talking to the others; two jobs sharing a
        # first node collide only if their ids are equal modulo 20000.
        port = str(20000 + int(env["SLURM_JOB_ID"]) % 20000)
    per_node = re.match(r"\d+", env.get("SLURM_STEP_TASKS_PER_NODE", "")) or re.match(
        r"\d+", env.get("SLURM_NTASKS_PER_NODE", "")
    )
    return {
        "rank": int(env["SLURM_PROCID"]),
        "world_size": world_size,
        "local_rank": int(env.get("SLURM_LOCALID", 0)),
        "local_world_size": int(per_node.group()) if per_node else None,
        "init_method": f"tcp://{addr}:{port}",
        # `srun --gpus-per-task=1` (or --gpu-bind) shows each task only its own GPU.
        "per_process_binding": True,
    }


def _stop_with_parent() -> None:
    """Have this process receive SIGTERM when its parent, a torchrun agent, dies (Linux only).

    torchrun starts its workers in their own sessions: a worker whose agent was killed would go
    on training with the other machines' workers, and the surviving agents would wait for it at
    their exit barrier. With the signal it stops like a preempted run instead: every rank agrees
    on the iteration, saves a checkpoint and exits with `preemption.EXIT_PREEMPTED`, which the
    surviving agents report as a failed worker. (SIGTERM rather than SIGKILL, so that an agent
    that a signal it does not handle ended, e.g. SLURM's SIGUSR1, costs no progress either.)
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM)) != 0:
        logger.warning("Could not tie this worker to its torchrun agent (prctl failed).")
        return
    if os.getppid() != parent:  # the agent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def launch(
    main_fn: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    backend: str | None = None,
) -> Any:
    """Run ``main_fn(*args)`` in every process of a (possibly distributed) job.

    Args:
        main_fn: the per-process entry point; must be picklable (a module-level function) when
            processes are spawned.
        num_gpus_per_machine: processes per machine (GPUs on CUDA; on CPU, processes that share
            the cores).
        num_machines: number of machines.
        machine_rank: this machine's index in [0, num_machines).
        dist_url: rendezvous address, ``tcp://HOST:PORT``; "auto" (or None) picks a free local port
            and is valid on one machine only.
        args: positional arguments for `main_fn`.
        timeout: how long a collective may wait for a missing rank before failing
            (``ATROUS_DIST_TIMEOUT`` in seconds overrides it).
        backend: "nccl" or "gloo"; default `default_backend()` (NCCL whenever CUDA exists).
            Pass ``default_backend(cfg.MODEL.DEVICE)`` so that a CPU model on a GPU machine
            uses gloo.

    Returns:
        What `main_fn` returns in a single process (spawned processes' results are not returned).

    Raises:
        Exception: the first exception raised in any spawned process, re-raised here (its
            cause holds that process's traceback), so that callers can handle a worker's error
            like one of their own; the other processes are stopped.
        torch.multiprocessing.ProcessRaisedException: the worker's exception could not be
            pickled.
        torch.multiprocessing.ProcessExitedException: a spawned process died without an
            exception (a signal, ``os._exit``).
        TrainingPreempted: the spawned processes stopped on a stop signal (after saving).
    """
    timeout = _timeout_from_env(timeout)
    backend = backend or default_backend()
    launcher, place = _started_by()
    if launcher == "torchrun":
        return _launch_torchrun(main_fn, args, place, timeout=timeout, backend=backend)
    if launcher == "slurm":
        return _launch_slurm(main_fn, args, place, timeout=timeout, backend=backend)

    world_size = _world_size_from_flags(num_gpus_per_machine, num_machines, machine_rank)
    if world_size == 1:
        return main_fn(*args)
    if backend == "nccl":
        # Before anything is spawned: eight processes that each fail to find their GPU leave
        # eight tracebacks and a half-made output folder.
        check_num_gpus(num_gpus_per_machine, device="cuda", cuda_count=visible_gpu_count())
    return _spawn_local(
        main_fn,
        args,
        num_gpus_per_machine=num_gpus_per_machine,
        machine_rank=machine_rank,
        world_size=world_size,
        dist_url=_resolve_dist_url(dist_url, num_machines),
        timeout=timeout,
        backend=backend,
    )


def _launch_torchrun(
    main_fn: Callable[..., Any],
    args: Sequence[Any],
    env: dict[str, Any],
    *,
    timeout: timedelta,
    backend: str,
) -> Any:
    """Join the group of a process that torchrun (or an ``env://`` wrapper) already started.

    Args:
        env: rank, world_size, local_rank and local_world_size from `_torchrun_env`.
    """
    if "TORCHELASTIC_RUN_ID" in os.environ:
        _stop_with_parent()
    return _run_in_group(
        main_fn, args, init_method="env://", timeout=timeout, backend=backend, **env
    )


def _launch_slurm(
    main_fn: Callable[..., Any],
    args: Sequence[Any],
    slurm: dict[str, Any],
    *,
    timeout: timedelta,
    backend: str,
) -> Any:
    """Join the group of an ``srun`` job step, one task per device.

    Args:
        slurm: the keyword arguments of `_run_in_group` that `_slurm_env` read (rank,
            world_size, local_rank, local_world_size, init_method).
    """
    logger.info(
        "SLURM task %d of %d (local %d), rendezvous at %s; --num-gpus, --num-machines and "
        "--dist-url are ignored.",
        slurm["rank"],
        slurm["world_size"],
        slurm["local_rank"],
        slurm["init_method"],
    )
    return _run_in_group(main_fn, args, timeout=timeout, backend=backend, **slurm)


def _world_size_from_flags(num_gpus_per_machine: int, num_machines: int, machine_rank: int) -> int:
    """The number of processes the ``--num-gpus``/``--num-machines`` flags ask for, checked.

    Raises:
        ValueError: a count below 1, or a machine rank outside [0, num_machines).
    """
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(
            f"--num-gpus and --num-machines must be at least 1, got {num_gpus_per_machine} and "
            f"{num_machines}."
        )
    if not 0 <= machine_rank < num_machines:
        raise ValueError(f"--machine-rank must lie in [0, {num_machines}), got {machine_rank}.")
    return num_machines * num_gpus_per_machine


def _resolve_dist_url(dist_url: str | None, num_machines: int) -> str:
    """The rendezvous address: `dist_url`, or a free local port for None/"auto" (one machine).

    Raises:
        ValueError: "auto" (or None) with more than one machine.
    """
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise ValueError(
                "--dist-url auto only works on one machine; pass tcp://HOST:PORT of machine 0 "
                "to every machine."
            )
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// rendezvous across machines needs a shared filesystem.")
    return dist_url


def _spawn_local(
    main_fn: Callable[..., Any],
    args: Sequence[Any],
    *,
    num_gpus_per_machine: int,
    machine_rank: int,
    world_size: int,
    dist_url: str,
    timeout: timedelta,
    backend: str,
) -> None:
    """Spawn this machine's `num_gpus_per_machine` processes and wait for them all.

    Stop signals that reach this parent are relayed to the processes (a second one kills them);
    the first exception raised in any process is re-raised here.

    Raises:
        Exception, torch.multiprocessing.ProcessRaisedException, ProcessExitedException,
        TrainingPreempted: as documented in `launch`.
    """
    ctx = mp.get_context("spawn")
    # The parent's stop request (a signal number) and the stop its processes made: signal and
    # last iteration. Shared memory, read by the ranks at every iteration boundary.
    request = ctx.Value("i", 0, lock=False)
    stopped = ctx.Array("q", [0, -1], lock=False)
    with tempfile.TemporaryDirectory(prefix="atrous-launch-") as error_dir:
        processes = mp.start_processes(
            _spawned_worker,
            nprocs=num_gpus_per_machine,
            args=(
                main_fn,
                args,
                world_size,
                num_gpus_per_machine,
                machine_rank,
                dist_url,
                timeout,
                backend,
                error_dir,
                request,
                stopped,
            ),
            daemon=False,
            start_method="spawn",
            join=False,
        )
        _join_spawned(processes, request=request, error_dir=error_dir)
    if stopped[0]:
        raise TrainingPreempted(
            signal_name=preemption.signal_name(int(stopped[0])),
            iteration=int(stopped[1]),
            checkpoint=None,
        )
    return None


def _join_spawned(processes: mp.ProcessContext, *, request: Any, error_dir: str) -> None:
    """Wait for the spawned `processes`, relaying stop signals, re-raising the first error.

    Args:
        processes: the context `mp.start_processes` returned (``join=False``).
        request: the shared stop request (a signal number) that `StopSignals` sets.
        error_dir: where the processes left their exceptions (`_save_worker_error`).
    """

    def kill_all() -> None:
        for process in processes.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)

    try:
        with StopSignals(request=request, on_second=kill_all):
            # After a failure the other ranks get a moment to fail by themselves (they
            # usually do at once: their peer is gone) before torch terminates them.
            while not processes.join(grace_period=_GRACE_PERIOD_S):
                pass
    except mp.ProcessRaisedException:
        first = _first_worker_error(error_dir)
        if first is None:
            raise
        error, remote = first
        raise error from remote


# Seconds the surviving ranks get to exit on their own once one rank failed.
_GRACE_PERIOD_S = 10.0


class _RemoteTraceback(Exception):
    """A spawned process's traceback, as the cause of its exception re-raised in the parent."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _error_file(error_dir: str, rank: int) -> str:
    return os.path.join(error_dir, f"rank{rank}.pickle")


def _save_worker_error(error_dir: str, rank: int, error: BaseException) -> None:
    """Leave `error` (with when it happened and its traceback) for the parent to re-raise."""
    import time
    import traceback

    text = "".join(traceback.format_exception(error))
    try:
        data = pickle.dumps((time.time_ns(), rank, error, text))
        pickle.loads(data)  # an exception that does not round-trip is reported by torch instead
    except Exception:
        return
    with open(_error_file(error_dir, rank), "wb") as f:
        f.write(data)


def _first_worker_error(error_dir: str) -> tuple[BaseException, _RemoteTraceback] | None:
    """The exception that happened first in any rank: the cause, not a rank that saw its peer go.

    torch reports the first process to *exit*, which is often a victim ("connection closed by
    peer") of the rank that raised first.
    """
    found = []
    for name in os.listdir(error_dir):
        try:
            with open(os.path.join(error_dir, name), "rb") as f:
                found.append(pickle.load(f))
        except Exception:
            continue
    found = [f for f in found if isinstance(f, tuple) and len(f) == 4]
    if not found:
        return None
    _, rank, error, text = min(found, key=lambda f: f[0])
    return error, _RemoteTraceback(f"\n-- Process of rank {rank} failed with:\n{text}")


def _spawned_worker(
    local_rank: int,
    main_fn: Callable[..., Any],
    args: Sequence[Any],
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    timeout: timedelta,
    backend: str,
    error_dir: str,
    request: Any,
    stopped: Any,
) -> None:
    preemption.set_launcher_request(request)
    try:
        _run_in_group(
            main_fn,
            args,
            rank=machine_rank * num_gpus_per_machine + local_rank,
            world_size=world_size,
            local_rank=local_rank,
            init_method=dist_url,
            timeout=timeout,
            backend=backend,
            local_world_size=num_gpus_per_machine,
            error_dir=error_dir,
        )
    except TrainingPreempted as stop:
        # A normal exit: a non-zero one would make the parent terminate the other ranks, which
        # may still be finishing theirs. The parent raises it again from `stopped`.
        stopped[0] = int(getattr(signal, stop.signal_name, signal.SIGTERM))
        stopped[1] = stop.iteration


def _run_in_group(
    main_fn: Callable[..., Any],
    args: Sequence[Any],
    *,
    rank: int,
    world_size: int,
    local_rank: int | None,
    init_method: str,
    timeout: timedelta,
    backend: str,
    local_world_size: int | None = None,
    per_process_binding: bool = False,
    error_dir: str | None = None,
) -> Any:
    """Join the process group as `rank`, on the GPU of this process (NCCL) or a share of the
    cores (gloo), and run ``main_fn(*args)``.

    Args:
        local_rank: the rank on this machine; None when the launcher did not say (enough on the
            CPU, or with one visible GPU).
        local_world_size: processes on this machine, when known.
        per_process_binding: the launcher may show each process only its own GPU (SLURM).
    """
    if backend == "nccl":
        torch.cuda.set_device(
            gpu_index_for_process(
                local_rank=local_rank,
                local_world_size=local_world_size,
                visible=visible_gpu_count(),
                per_process_binding=per_process_binding,
            )
        )
    else:
        # Processes on one CPU must share its cores, or they slow each other down by
        # oversubscription.
        local = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    dist.init_process_group(
        backend=backend,
        init_method=init_method,
        world_size=world_size,
        rank=rank,
        timeout=timeout,
    )
    comm.set_local_rank(local_rank if local_rank is not None else 0)
    try:
        comm.synchronize()
        return main_fn(*args)
    except TrainingPreempted:
        raise  # a requested stop, logged by rank 0: no traceback
    except Exception as error:
        # The launcher reports only the first rank to fail, sometimes a victim of the real
        # cause ("connection closed by peer"); every rank keeps its own traceback in its log
        # file (rank 0: OUTPUT_DIR/log.txt) and, with ATROUS_VERBOSE=1 (`atrous --verbose`), on
        # stderr.
        from atrous.engine.defaults import log_exception_to_files

        if error_dir is not None:  # before the group goes down and the other ranks fail too
            _save_worker_error(error_dir, rank, error)
        log_exception_to_files(error)
        if os.environ.get("ATROUS_VERBOSE") == "1":
            print(f"[rank {rank}] failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        raise
    finally:
        dist.destroy_process_group()
