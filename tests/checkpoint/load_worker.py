"""Load checkpoint files in a separate process, so a crash or a hang is an outcome, not the end.

Run as a script it is the worker: it reads ``{"suffix": ..., "size": n}\\n`` + n bytes from stdin,
writes them to a file, loads that with :func:`atrous.checkpoint.load_checkpoint_file` and into a
toy model with :class:`~atrous.checkpoint.Checkpointer`, *uses* every loaded value (repr, sums,
comparisons: memory-unsafe arrays only crash when read) and answers with one JSON line, which
also says how much the process's peak memory grew. Its address space is capped a few GB above
what the imports need, so a runaway allocation fails instead of swamping the machine. Imported,
:class:`LoadWorker` drives one such process and restarts it after a crash or a hang.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ALLOWED_ERRORS = {"UnsafePickleError", "CorruptCheckpointError"}
# Address space the worker may use beyond what it has after its imports.
MEMORY_HEADROOM = 4 << 30


def _cap_memory() -> None:
    import resource

    with open("/proc/self/status") as f:
        vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_kb * 1024 + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    # Some tests crash the worker on purpose: no core file (160 MB, in the caller's folder).
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ------------------------------------------------------------------------------ worker side


def _touch(value: Any, dtypes: list[str], seen: set[int] | None = None, depth: int = 0) -> None:
    """Read every byte of every loaded value, the way logging or a model load would."""
    import numpy as np
    import torch

    seen = set() if seen is None else seen
    if depth > 100 or id(value) in seen:  # shared references are read once
        return
    seen.add(id(value))
    if isinstance(value, dict):
        for k, v in value.items():
            _touch(k, dtypes, seen, depth + 1)
            _touch(v, dtypes, seen, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            _touch(v, dtypes, seen, depth + 1)
    elif isinstance(value, np.ndarray | np.generic):
        repr(value)
        array = np.asarray(value)
        dtypes.append(array.dtype.str)
        array.sum()
        bool((array == array).all())
        array.tobytes()
        array.copy()
    elif isinstance(value, torch.Tensor):
        # torch's printing is slow and torch checks its own storages; reading them is enough.
        value.clone()
        value.flatten()[:8].tolist()
    else:
        repr(value)


class _Done(Exception):
    """A request finished without error (one exit point for the answer)."""


def _serve() -> None:
    import faulthandler
    import warnings

    faulthandler.enable()  # a segfault prints where it happened to stderr
    warnings.simplefilter("ignore")
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    from toy import ToySegmentor

    from atrous.checkpoint import Checkpointer, CheckpointError, load_checkpoint_file

    if sys.platform.startswith("linux"):
        _cap_memory()
    workdir = Path(sys.argv[1])
    stdin, stdout = sys.stdin.buffer, sys.stdout
    stdout.write('{"ready": true}\n')  # imports done: loads are timed from here on
    stdout.flush()
    while header := stdin.readline():
        request = json.loads(header)
        data = stdin.read(request["size"])
        path = workdir / f"input{request['suffix']}"
        path.write_bytes(data)
        answer: dict[str, Any] = {"stage": "load", "dtypes": []}
        peak_before = _peak_rss_mb()
        try:
            if request["loader"] == "pickle":  # unrestricted: only to test this harness
                _touch(pickle.loads(data), answer["dtypes"])
                raise _Done
            loaded = load_checkpoint_file(path)
            answer["stage"] = "touch"
            _touch(loaded, answer["dtypes"])
            answer["stage"] = "model"
            try:
                Checkpointer(ToySegmentor()).load(path)
            except CheckpointError as exc:  # e.g. ambiguous names: a clear error is fine here
                answer["model_error"] = f"{type(exc).__name__}: {exc}"[:300]
            raise _Done
        except _Done:
            answer["outcome"] = "ok"
        except Exception as exc:
            answer["outcome"] = type(exc).__name__
            answer["message"] = str(exc)[:1000]
            if type(exc).__name__ not in ALLOWED_ERRORS:
                import traceback

                answer["traceback"] = traceback.format_exc()[-3000:]
        answer["peak_growth_mb"] = _peak_rss_mb() - peak_before
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


# ------------------------------------------------------------------------------ client side


class LoadWorker:
    """One worker process; :meth:`load` returns its answer, or a crash / hang outcome.

    Args:
        timeout: seconds one load may take before it counts as a hang (the process is killed).
        startup_timeout: seconds the worker may take to import torch and atrous.
    """

    def __init__(self, *, timeout: float = 30.0, startup_timeout: float = 300.0) -> None:
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        self._dir = tempfile.TemporaryDirectory(prefix="atrous-load-worker-")
        self._stderr_path = Path(self._dir.name) / "stderr.txt"
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        import atrous

        env = dict(os.environ, OMP_NUM_THREADS="1")
        src = str(Path(atrous.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self._stderr = open(self._stderr_path, "wb")  # noqa: SIM115 - lives as long as the worker
        self.proc = subprocess.Popen(
            [sys.executable, __file__, self._dir.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        if not self._read_line(time.monotonic() + self.startup_timeout):
            self._stop()
            raise RuntimeError(
                "the load worker did not start: " + self._stderr_path.read_text()[-3000:]
            )
        return self.proc

    def _stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        rc = self.proc.wait()
        self._stderr.close()
        self.proc = None
        return rc

    def _read_line(self, deadline: float) -> bytes | None:
        """One answer line; b"" on EOF (the worker died), None when the deadline passes."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        chunks = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b""
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                return b"".join(chunks)

    def load(self, data: bytes, *, suffix: str = ".pkl", loader: str = "atrous") -> dict[str, Any]:
        """Load `data` saved as a file ending in `suffix`.

        `loader` "pickle" uses plain, unrestricted ``pickle.loads`` instead of atrous' loaders; it
        exists to check that crashes and hangs are detected.

        Returns:
            The worker's answer: ``outcome`` ("ok" or the exception's class name), ``message``,
            ``dtypes`` of the arrays it read; or ``outcome`` "crash" (with ``returncode`` and the
            worker's stderr) or "hang".
        """
        if self.proc is None:
            self.proc = self._start()
        assert self.proc is not None and self.proc.stdin is not None
        request = {"suffix": suffix, "size": len(data), "loader": loader}
        header = json.dumps(request).encode() + b"\n"
        deadline = time.monotonic() + self.timeout
        try:
            self.proc.stdin.write(header + data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._read_line(deadline)
        if line:
            return json.loads(line)
        hung = line is None
        if not hung:
            # The pipe closed because the process is dying; let it finish (a crash report).
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        rc = self._stop()
        stderr = self._stderr_path.read_bytes().decode(errors="replace")[-3000:]
        return {"outcome": "hang" if hung else "crash", "returncode": rc, "stderr": stderr}

    def close(self) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            self._stop()
        self._dir.cleanup()


if __name__ == "__main__":
    _serve()
