"""Stop signals: SIGTERM, SIGINT and SIGUSR1 end a training run cleanly at an iteration boundary.

SLURM (``--signal=USR1@120`` and at the time limit), Kubernetes and ``docker stop`` send SIGTERM
or SIGUSR1, a terminal sends SIGINT. `StopSignals` turns the first one into a request that the
training loop reads at its next iteration boundary (`atrous.engine.hooks.PreemptionCheckpointer`
makes every rank agree on it, saves a checkpoint and raises `TrainingPreempted`); a second signal
ends the process at once, by that signal, without saving.

A run stopped this way exits with `EXIT_PREEMPTED` (75, ``EX_TEMPFAIL`` of sysexits.h: "try
again later"): non-zero, so a scheduler does not mark the job complete, and distinct from an
error (1), a bad command line (2) and a process killed by a signal before it could save (128 + the
signal number, e.g. 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

__all__ = [
    "EXIT_PREEMPTED",
    "STOP_SIGNALS",
    "StopSignals",
    "TrainingPreempted",
    "has_launcher_request",
    "set_launcher_request",
    "signal_name",
]

logger = logging.getLogger(__name__)

EXIT_PREEMPTED = 75

# SIGUSR1 does not exist on Windows.
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name)
)


class TrainingPreempted(Exception):
    """Training stopped on a stop signal after saving a resumable checkpoint.

    Attributes:
        signal_name: e.g. ``"SIGTERM"``.
        iteration: the last completed iteration; the checkpoint stores it, ``--resume``
            continues with the next one.
        checkpoint: path of the saved checkpoint (None where this process did not write it).
    """

    def __init__(self, *, signal_name: str, iteration: int, checkpoint: str | None) -> None:
        self.signal_name = signal_name
        self.iteration = iteration
        self.checkpoint = checkpoint
        saved = f"saved {checkpoint}" if checkpoint else "checkpoint saved"
        super().__init__(
            f"Received {signal_name}: stopped after iteration {iteration}, {saved}; "
            "continue with --resume"
        )


# A shared integer (multiprocessing.Value) through which the process that spawned this one asks
# it to stop: that process received the signal and this one may not have (``kill PID`` and
# ``docker stop`` signal one process, a terminal's Ctrl-C and SLURM signal them all).
_launcher_request: Any = None


def set_launcher_request(value: Any) -> None:
    """Register the spawning parent's stop request (a shared int, 0 = none) for this process."""
    global _launcher_request
    _launcher_request = value


def has_launcher_request() -> bool:
    """True in a process spawned by `atrous.engine.launch` (its parent relays stop signals)."""
    return _launcher_request is not None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _say(message: str) -> None:
    # Signal handlers write with os.write: a logging call could re-enter a handler's lock.
    with contextlib.suppress(OSError):
        os.write(2, (message + "\n").encode())


class StopSignals:
    """A context manager that catches stop signals in this process while it is active.

    The first signal only records itself (`requested` returns it); the loop decides when to stop.
    A second one, `repeat_after` seconds or more after the first, restores the default action and
    re-sends itself: the process ends at once. Repeats within `repeat_after` are duplicates of the
    first (srun forwards to its tasks the SIGTERM that SLURM also sends them directly; torchrun
    forwards to its workers' process groups what their processes also got) and are ignored.
    Handlers are installed only in the main thread (Python allows no other) and the previous ones
    are restored on exit, so a notebook calling `Trainer.train` gets its own SIGINT handler back.
    Processes forked while it is active (data-loader workers) inherit the handler and ignore the
    signals: the training process decides and shuts them down.

    Args:
        signals: the signals to catch.
        request: a shared int (``multiprocessing.Value``) set to the signal number on the first
            signal, for processes started by this one.
        on_second: called before the process ends on a second signal (e.g. to kill children).
        announce: write a line to stderr on the first signal (off in spawned ranks, whose parent
            or rank 0 already says it).
        repeat_after: seconds after the first signal from which a second one ends the process.
    """

    def __init__(
        self,
        signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
        *,
        request: Any = None,
        on_second: Any = None,
        announce: bool = True,
        repeat_after: float = 1.0,
    ) -> None:
        self.signals = signals
        self.request = request
        self.on_second = on_second
        self.announce = announce
        self.repeat_after = repeat_after
        self.received = 0
        self.received_at: float | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()
        self.installed = False

    def requested(self) -> int:
        """The number of the first stop signal received here or by the launcher; 0 if none."""
        if self.received:
            return self.received
        if _launcher_request is not None and _launcher_request.value:
            return int(_launcher_request.value)
        return 0

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            logger.debug("Not the main thread: stop signals are left to their current handlers.")
            return self
        self._pid = os.getpid()
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.installed:
            return
        for sig, previous in self._previous.items():
            # None: the old handler was not installed from Python; the default is the best guess.
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self.installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked worker: the training process handles the signal
        name = signal_name(signum)
        if self.received:
            if time.monotonic() - (self.received_at or 0.0) < self.repeat_after:
                return  # the same request delivered twice
            _say(f"Received {name} again: exiting now without saving.")
            if self.on_second is not None:
                self.on_second()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            os._exit(128 + signum)  # only if the signal's default action does not end us
        self.received = signum
        self.received_at = time.monotonic()
        if self.request is not None:
            self.request.value = signum
        if self.announce:
            _say(
                f"Received {name}: saving a checkpoint at the end of this iteration, then "
                f"exiting with status {EXIT_PREEMPTED} (send it again to exit at once)."
            )
