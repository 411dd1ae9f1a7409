"""Crash-safe file writes: write elsewhere, make it durable, then rename into place.

Readers (and a run resumed after a crash or kill) see either the previous file or the complete
new one, never a truncated file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_writable_dir",
    "current_umask",
    "fsync_dir",
    "publish_folder",
    "sha256_file",
    "staging_dir",
    "temporary_name",
]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry so a completed rename survives a power loss.

    Platforms that cannot open a directory (Windows) skip this silently.
    """
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temporary_name(path: str | os.PathLike[str], *, suffix: str = ".tmp") -> Path:
    """A unique hidden name beside `path` to write it under before renaming it into place.

    It starts with (at most 200 bytes of) `path`'s name, so that a name that fits the file
    system's 255 bytes still fits with the process id and random part added.
    """
    path = Path(path)
    name = path.name.encode()[:200].decode(errors="ignore")
    return path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], None], *, durable: bool = True
) -> Path:
    """Create or replace `path` so that readers see either the old file or the complete new one.

    The data goes to a uniquely named temporary file in the same directory (so the final
    ``os.replace`` is a rename within one file system), is flushed and fsynced, renamed over
    `path`, and the directory is fsynced. If `write` raises, the temporary file is removed and
    `path` is untouched. Missing parent directories are created.

    Args:
        path: destination file.
        write: called with the open temporary file (binary mode).
        durable: fsync the file and its folder. Without it the replacement is still atomic for
            every reader and for a crash of the process, but a power loss may lose it; that is
            the right trade for thousands of small pictures that a rerun recreates, where two
            fsyncs a file would cost more than the encoding.

    Returns:
        `path` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the write failed (disk full, read-only, ...); its ``filename`` is `path` even
            when the failure surfaced elsewhere (``torch.save`` reports a full disk as a
            RuntimeError whose context is the OSError).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as error:
        cause = _os_error_in_chain(error)
        if cause is None or (cause is error and cause.filename is not None):
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from error
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if durable:
        fsync_dir(path.parent)
    return path


def _os_error_in_chain(error: BaseException) -> OSError | None:
    """The first OSError with an errno among `error` and its causes/contexts."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        current = current.__cause__ or current.__context__
    return None


def check_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` if needed and prove it writable by creating and removing a file there.

    ``os.access`` is not enough: it says yes to root on a folder whose mode forbids writing, and
    some network file systems answer it wrongly; a real file tells the truth before hours of work.

    Raises:
        OSError: the folder cannot be created or written (EROFS, EACCES, ENOSPC, ...), with
            ``filename`` naming it.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_test.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0")
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return path


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike[str], *, prefix: str) -> Iterator[Path]:
    """A temporary folder in `parent`, removed with whatever is left in it on exit.

    On the output's own file system, so that files written there are moved into place by an
    atomic rename (``os.replace``).
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def current_umask() -> int:
    """The process's umask (there is no call that only reads it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_folder(staging: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Put the finished folder `staging` (a `staging_dir`) at `output`, whole or not at all.

    An existing `output` is renamed aside, replaced and then removed, so that readers see the
    old folder or the new one, never a mix; the caller has checked that it may be replaced.

    Returns:
        `output` as a Path.
    """
    staging, output = Path(staging), Path(output)
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp creates 0700; give the usual mode
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
        os.replace(staging, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, output)
    fsync_dir(output.parent)
    return output


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> Path:
    return atomic_write(path, lambda f: f.write(data), durable=durable)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _nan_to_none(value: Any) -> Any:
    # JSON has no NaN; null keeps the file readable by strict parsers (browsers, jq).
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write `obj` as indented JSON, NaN written as ``null``."""
    return atomic_write_text(path, json.dumps(_nan_to_none(obj), indent=2) + "\n")


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (model files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
