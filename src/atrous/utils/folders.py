"""Output folders: one run at a time, writable with room to spare, and names that stay inside.

* `OutputDirLock` claims a folder for one process (``<folder>/.atrous.lock``), so that two runs
  cannot interleave their logs and overwrite each other's checkpoints.
* `check_writable` and `check_free_space` fail at start, with the folder in the message, instead
  of at the first checkpoint hours later.
* `safe_dataset_dirname` turns a dataset name (which may be a path such as
  ``/data/mri/d.yaml:val``) into one folder name, so per-dataset results land inside the
  output folder.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from .file_io import check_writable_dir

try:
    import fcntl
except ImportError:  # Windows: the lock file's contents are the only guard there
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_NAME",
    "MIN_FREE_BYTES",
    "OutputDirError",
    "OutputDirLock",
    "OutputDirLockedError",
    "check_free_space",
    "check_writable",
    "safe_dataset_dirname",
]

LOCK_NAME = ".atrous.lock"
# Logs, metrics, reports and pictures; a checkpoint's own size is checked once the model exists.
MIN_FREE_BYTES = 50 * 10**6


class OutputDirError(RuntimeError):
    """An output folder cannot be used: not writable, full, in use, or holding a previous run."""


class OutputDirLockedError(OutputDirError):
    """Another process holds (or a run on another host left) the folder's lock.

    Attributes:
        holder: what the lock file says about its owner (``pid``, ``host``, ``started``,
            ``command``); empty when it could not be read.
    """

    def __init__(self, message: str, *, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = dict(holder or {})


def _mb(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:,.0f} MB" if num_bytes >= 1e6 else f"{num_bytes / 1e6:.1f} MB"


def check_free_space(
    directory: str | os.PathLike[str], need_bytes: int, *, purpose: str, label: str = "OUTPUT_DIR"
) -> None:
    """Raise `OutputDirError` when the file system of `directory` has less than `need_bytes` free.

    Args:
        directory: an existing folder.
        need_bytes: the space required.
        purpose: what needs it, for the message ("a checkpoint of this model").
        label: how the user named the folder (a config key or a flag).
    """
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        raise OutputDirError(
            f"only {_mb(free)} free on {label} {directory}; {purpose} needs ~{_mb(need_bytes)}. "
            f"Free some space there or set {label} to a folder on a disk with room."
        )


def check_writable(
    directory: str | os.PathLike[str],
    *,
    label: str = "OUTPUT_DIR",
    min_free_bytes: int = MIN_FREE_BYTES,
) -> None:
    """Create `directory` if needed and prove that files can be created in it and that it has room.

    A real file is created and removed: permission bits alone do not tell (ACLs, read-only
    mounts, root squashing on NFS).

    Raises:
        OutputDirError: it cannot be created, is not a folder, is not writable, or has less than
            `min_free_bytes` free.
    """
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise OutputDirError(f"{label} {directory} exists and is not a folder.")
    try:
        check_writable_dir(directory)
    except OSError as error:
        raise OutputDirError(
            f"{label} {directory} cannot be created or written: {error.strerror or error}. "
            f"Set {label} to a folder you can write to."
        ) from error
    check_free_space(directory, min_free_bytes, purpose="the run's logs and reports", label=label)


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def safe_dataset_dirname(name: str) -> str:
    """One folder name for a dataset name, safe to join to an output folder.

    Plain names (``cityscapes_fine_sem_seg_val``) are kept, so the familiar
    ``inference/<dataset>/`` layout stays. Any other name (a YAML path with a split, anything
    with separators, ``..`` or ``:``) becomes its last path component with unsafe characters
    replaced, plus a short hash of the full name so that ``a/d.yaml:val`` and ``b/d.yaml:val``
    stay apart: ``"/data/mri/d.yaml:val"`` -> ``"d.yaml_val-<8 hex digits>"``.
    """
    if _PLAIN_NAME.fullmatch(name):  # not match: "$" also matches before a final newline
        return name
    tail = re.split(r"[\\/]+", name.strip("\\/"))[-1]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", tail).strip("._-")[:60] or "dataset"
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{stem}-{digest}"


# ---------------------------------------------------------------------------------------------
# The lock.
# ---------------------------------------------------------------------------------------------


def _process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _process_alive(pid: int, start_ticks: int | None) -> bool:
    """Whether `pid` runs on this host and is the process that started at `start_ticks`."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return False
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rfind(")") + 2 :].split()[0] in ("Z", "X"):
            return False  # exited, not yet reaped by its parent
    if start_ticks is not None:
        now = _process_start_ticks(pid)
        if now is not None and now != start_ticks:
            return False  # the PID was reused by another process
    return True


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process whose details are not written yet (it is starting)"
    if "unreadable" in holder:
        return f"an unreadable lock record ({holder['unreadable']!r})"
    return (
        f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
        f"{holder.get('started', '?')}, command: {holder.get('command', '?')}"
    )


def _read_record(fd: int) -> dict[str, Any]:
    data = os.pread(fd, 1 << 16, 0)
    if not data.strip():
        return {}
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"unreadable": data[:200].decode("utf-8", "replace")}
    return record if isinstance(record, dict) else {"unreadable": str(record)[:200]}


def _flock(fd: int) -> bool | None:
    """True: locked; False: another open file holds it; None: this file system cannot flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP, ...: fall back to the lock record alone
    return True


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


class OutputDirLock:
    """An exclusive claim on a folder for the lifetime of one process's run.

    The claim is a ``flock`` on ``<directory>/.atrous.lock``, which the kernel drops when the
    process dies however it dies, plus a record in the file (PID, host, start time, command) that
    names the holder in the refusal and outlives a crash. On acquisition:

    * the flock is held by a live process: refused, naming it;
    * the record names a process on this host that no longer runs (SIGKILL, OOM, power loss):
      taken over, with a warning returned by `acquire`;
    * the record names another host: refused, because that process cannot be checked from here
      and file systems shared between hosts do not all propagate flocks; the message says how
      to remove the file if that run is gone.

    A clean `release` deletes the file, so only crashed runs leave one behind.

    Args:
        directory: the folder to claim (must exist).
        command: the holder's command line, for other runs' messages (default ``sys.argv``).
    """

    def __init__(self, directory: str | os.PathLike[str], *, command: str | None = None) -> None:
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, LOCK_NAME)
        self.command = command if command is not None else " ".join(sys.argv)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _record(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": self.command,
            "proc_start": _process_start_ticks(os.getpid()),
        }

    def _refuse(self, holder: dict[str, Any], *, other_host: bool = False) -> OutputDirLockedError:
        if other_host:
            message = (
                f"{self.directory} is locked by an atrous run on another host: "
                f"{_describe(holder)}. That process cannot be checked from "
                f"{socket.gethostname()}; if no run is active there any more, delete {self.path} "
                "and start again."
            )
        else:
            message = (
                f"{self.directory} is in use by another atrous run: {_describe(holder)}. Wait "
                "for it to finish, stop it, or set OUTPUT_DIR to another folder. If it is not "
                f"an atrous run in this folder, delete {self.path}."
            )
        return OutputDirLockedError(message, holder=holder)

    def _judge_previous(self, holder: dict[str, Any]) -> str | None:
        """Raise for a holder that may still run; return the take-over warning otherwise."""
        if "unreadable" in holder:
            return f"Taking over {self.path}, which held {_describe(holder)}."
        host = holder.get("host")
        if host != socket.gethostname():
            raise self._refuse(holder, other_host=True)
        pid = int(holder.get("pid", -1))
        if pid == os.getpid():
            return None
        if _process_alive(pid, holder.get("proc_start")):
            raise self._refuse(holder)
        return (
            f"Taking over the lock of {self.directory} left by {_describe(holder)}: that process "
            "no longer runs (it crashed or was killed). Its files are kept."
        )

    def acquire(self) -> str | None:
        """Claim the folder.

        Returns:
            A warning to log when a stale lock of a dead process was taken over, else None.

        Raises:
            OutputDirLockedError: another run holds the folder (or may, on another host).
        """
        if self._fd is not None:
            return None
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                locked = _flock(fd)
                if locked is False:
                    raise self._refuse(_read_record(fd))
                if not _same_file(fd, self.path):
                    # The holder released (deleted the file) between our open and our flock.
                    os.close(fd)
                    continue
                previous = _read_record(fd)
                note = self._judge_previous(previous) if previous else None
                data = json.dumps(self._record(), sort_keys=True).encode("utf-8") + b"\n"
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return note
        raise OutputDirError(f"could not lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        """Give the folder up: delete the lock file (still holding the flock), then close it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.path):
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
        finally:
            os.close(fd)

    def __enter__(self) -> OutputDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
