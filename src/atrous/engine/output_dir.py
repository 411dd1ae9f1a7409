"""What a run may do with its OUTPUT_DIR: claim it, and refuse to mix a fresh run into an old one.

`prepare_output_dir` runs on the writing process (rank 0) before anything is built:

1. the folder is created and proven writable, with room for logs (`check_writable`);
2. it is locked for the whole process (`OutputDirLock`), so a second run on it is refused;
3. a fresh training run in a folder that holds a previous run (``last_checkpoint``,
   ``metrics.json`` or ``model_*.pth``) is refused unless it resumes (``--resume``) or starts
   afresh (``--overwrite``), which moves the previous run's files into
   ``OUTPUT_DIR/previous/<time>/``. ``--eval-only`` trains nothing and is allowed anywhere.

The previous run is moved *inside* OUTPUT_DIR rather than next to it: renames within one folder
stay on one file system (instant even for large checkpoints), need no write access to the parent
(often a shared project folder or a mount point) and keep the promise that nothing is written
outside OUTPUT_DIR.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from atrous.utils import comm
from atrous.utils.folders import (
    LOCK_NAME,
    OutputDirError,
    OutputDirLock,
    check_free_space,
    check_writable,
)

__all__ = [
    "PREVIOUS_DIR",
    "check_checkpoint_space",
    "checkpoint_size_estimate",
    "move_previous_run",
    "on_main_process",
    "prepare_output_dir",
    "previous_run_files",
    "release_output_dir",
]

logger = logging.getLogger(__name__)

PREVIOUS_DIR = "previous"

# This process's locks, by real path: taking one twice (a notebook calling default_setup again)
# must not refuse the process itself.
_HELD: dict[str, OutputDirLock] = {}
_RELEASE_AT_EXIT = False


T = TypeVar("T")


def on_main_process(fn: Callable[[], T], default: T) -> T:
    """``fn()`` on rank 0 (`default` elsewhere); an `OutputDirError` there is raised on every rank.

    Only rank 0 writes to OUTPUT_DIR, so only it checks; the others must not then wait in the
    next collective for a rank 0 that gave up.
    """
    error: OutputDirError | None = None
    result = default
    if comm.is_main_process():
        try:
            result = fn()
        except OutputDirError as e:
            error = e
    message = comm.all_gather_object(None if error is None else str(error))[0]
    if error is not None:
        raise error
    if message is not None:
        raise OutputDirError(message)
    return result


def checkpoint_size_estimate(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of a training checkpoint: the model's state plus the optimizer's per-parameter state.

    Momentum SGD keeps one buffer per parameter, Adam-style optimizers two; others count as two.
    """
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = [p for g in optimizer.param_groups for p in g["params"]]
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    if isinstance(optimizer, torch.optim.SGD):
        slots = int(any(g.get("momentum", 0) for g in optimizer.param_groups))
    else:
        slots = 2
    return model_bytes + slots * param_bytes


def check_checkpoint_space(
    directory: str | os.PathLike[str], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Raise `OutputDirError` when `directory` lacks room for one more checkpoint (+10%)."""
    need = int(checkpoint_size_estimate(model, optimizer) * 1.1)
    check_free_space(directory, need, purpose="a checkpoint of this model")


def previous_run_files(directory: str | os.PathLike[str]) -> list[str]:
    """The files in `directory` that show a training run used it (sorted names)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(
        n
        for n in names
        if n in ("last_checkpoint", "metrics.json")
        or (n.startswith("model_") and n.endswith(".pth"))
    )


def _summary(names: list[str]) -> str:
    checkpoints = [n for n in names if n.endswith(".pth")]
    parts = [n for n in names if not n.endswith(".pth")]
    if checkpoints:
        parts.append(
            checkpoints[0] if len(checkpoints) == 1 else f"{len(checkpoints)} model_*.pth files"
        )
    return ", ".join(parts)


def move_previous_run(directory: str | os.PathLike[str]) -> Path | None:
    """Move everything in `directory` (but the lock and ``previous/``) to ``previous/<time>/``.

    Nothing is deleted; the files are renamed, which is instant on one file system.

    Returns:
        The folder the files went to, or None when there was nothing to move.
    """
    directory = Path(directory)
    entries = sorted(p for p in directory.iterdir() if p.name not in (LOCK_NAME, PREVIOUS_DIR))
    if not entries:
        return None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        target = directory / PREVIOUS_DIR / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            target.mkdir(parents=True)
            break
        except FileExistsError:
            continue
    else:
        raise OutputDirError(f"cannot create a folder for the previous run under {target.parent}")
    for entry in entries:
        os.rename(entry, target / entry.name)
    return target


def _acquire(directory: str, command: str | None) -> tuple[bool, str | None]:
    """(whether this call took the lock, the take-over warning)."""
    key = os.path.realpath(directory)
    if key in _HELD:
        return False, None
    lock = OutputDirLock(directory, command=command)
    note = lock.acquire()
    global _RELEASE_AT_EXIT
    if not _RELEASE_AT_EXIT:
        # Entry points release explicitly; this covers scripts that only call default_setup.
        atexit.register(release_output_dir)
        _RELEASE_AT_EXIT = True
    _HELD[key] = lock
    return True, note


def release_output_dir(directory: str | os.PathLike[str] | None = None) -> None:
    """Release this process's lock on `directory` (all of its locks when None)."""
    keys = list(_HELD) if directory is None else [os.path.realpath(directory)]
    for key in keys:
        lock = _HELD.pop(key, None)
        if lock is not None:
            lock.release()


def prepare_output_dir(
    directory: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    eval_only: bool = False,
    command: str | None = None,
) -> list[str]:
    """Check, lock and (with `overwrite`) clear `directory` for a run; see the module docstring.

    The lock is held until `release_output_dir` or the end of the process.

    Args:
        directory: the run's OUTPUT_DIR.
        resume: the run continues the one in `directory` (``--resume``).
        overwrite: move a previous run's files aside and start afresh (``--overwrite``).
        eval_only: the run only evaluates (``--eval-only``), so a previous run may stay.
        command: the command line shown to a second run (default ``sys.argv``).

    Returns:
        Warnings for the run's log (a stale lock taken over, where the previous run went).

    Raises:
        OutputDirError: not writable or full, locked by another run (`OutputDirLockedError`),
            a previous run without `resume` or `overwrite`, or contradictory flags.
    """
    directory = os.fspath(directory)
    if resume and overwrite:
        raise OutputDirError(
            "--resume and --overwrite contradict each other: --resume continues the run in "
            f"{directory}, --overwrite moves it aside to start afresh. Pass one of them."
        )
    if eval_only and overwrite:
        raise OutputDirError(
            "--overwrite has no effect with --eval-only, which trains nothing and keeps the "
            f"training run in {directory}; drop --overwrite."
        )
    check_writable(directory)
    notes: list[str] = []
    taken, note = _acquire(directory, command if command is not None else " ".join(sys.argv))
    if note:
        notes.append(note)
    try:
        previous = previous_run_files(directory)
        if overwrite:
            moved = move_previous_run(directory)
            if moved is not None:
                notes.append(f"--overwrite: moved the previous contents of {directory} to {moved}")
        elif previous and not (resume or eval_only):
            raise OutputDirError(
                f"OUTPUT_DIR {directory} holds a previous run ({_summary(previous)}). Pass "
                "--resume to continue it, --overwrite to start afresh (its files are moved to "
                f"{os.path.join(directory, PREVIOUS_DIR)}/<time>/, nothing is deleted), or set "
                "OUTPUT_DIR to a new folder."
            )
    except BaseException:
        if taken:
            release_output_dir(directory)
        raise
    return notes
