"""Stop signals, with real signals: recorded once, a second one ends the process, handlers restored.

The end-to-end runs (a real ``train_net.py`` signalled from outside, resumed to bit-identical
weights, on one and on two processes) are in tests/cli/test_train.py.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from atrous.checkpoint import Checkpointer
from atrous.engine import PeriodicCheckpointer, PreemptionCheckpointer, SimpleTrainer
from atrous.engine.preemption import StopSignals, TrainingPreempted

REPO = Path(__file__).resolve().parents[2]


def _marker(signum: int, frame: object) -> None:
    raise AssertionError("the previous handler must not run while StopSignals is active")


@pytest.fixture
def own_handlers():
    """Custom handlers for the stop signals, as a notebook or an application would have."""
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    saved = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        signal.signal(s, _marker)
    yield sigs
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_first_signal_is_recorded_and_old_handlers_come_back(own_handlers) -> None:
    with StopSignals(announce=False) as stop:
        assert stop.installed and stop.requested() == 0
        os.kill(os.getpid(), signal.SIGUSR1)  # delivered before os.kill returns
        assert stop.requested() == signal.SIGUSR1
        assert stop.received_at is not None
    for s in own_handlers:
        assert signal.getsignal(s) is _marker


def test_not_installed_outside_the_main_thread(own_handlers) -> None:
    seen: dict[str, object] = {}

    def run() -> None:
        with StopSignals() as stop:
            seen["installed"] = stop.installed
            seen["handler"] = signal.getsignal(signal.SIGTERM)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == {"installed": False, "handler": _marker}


def test_forked_workers_ignore_the_signal() -> None:
    # A data-loader worker forked during training inherits the handler: it must neither die
    # (the trainer would fail on the dead worker) nor count as the training process's signal.
    def child() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a second one would end the training process
        os._exit(0)

    with StopSignals(announce=False) as stop:
        proc = multiprocessing.get_context("fork").Process(target=child)
        proc.start()
        proc.join(timeout=30)
        assert proc.exitcode == 0
        assert stop.requested() == 0


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_second_signal_exits_at_once(sig: str) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, time
        from atrous.engine.preemption import StopSignals
        with StopSignals(repeat_after=0.5):
            os.kill(os.getpid(), signal.{sig})
            os.kill(os.getpid(), signal.{sig})  # a duplicate delivery of the first
            print("first signal survived", flush=True)
            time.sleep(0.6)
            os.kill(os.getpid(), signal.{sig})
            print("second signal survived", flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    # Ended by the signal itself (a shell reports 128 + N), not by Python's KeyboardInterrupt.
    assert proc.returncode == -getattr(signal, sig), proc.stderr
    assert "first signal survived" in proc.stdout
    assert "second signal survived" not in proc.stdout
    assert proc.stderr.count(f"Received {sig}: saving a checkpoint") == 1
    assert f"Received {sig} again: exiting now without saving." in proc.stderr
    assert "Traceback" not in proc.stderr


class _SignalsItself(nn.Module):
    """y = 2x; sends this process SIGTERM during forward call `at` (counted from 0)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.at = at
        self.calls = 0

    def forward(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        self.calls += 1
        x = torch.stack([b["x"] for b in batch])
        return {"loss": ((self.lin(x).squeeze(1) - 2 * x.sum(1)) ** 2).mean()}


def _batches():
    g = torch.Generator().manual_seed(0)
    while True:
        yield [{"x": torch.randn(2, generator=g)} for _ in range(4)]


@pytest.mark.parametrize("period", [0, 3])
def test_loop_stops_after_the_signalled_step_with_a_checkpoint(
    tmp_path: Path, own_handlers, period: int
) -> None:
    # The signal arrives in the middle of iteration 2: that step completes, the checkpoint of
    # iteration 2 is written (by the periodic schedule already with period 3) and the loop ends.
    model = _SignalsItself(at=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ckpt = Checkpointer(model, save_dir=tmp_path, optimizer=opt)
    periodic = PeriodicCheckpointer(ckpt, period=period, max_iter=10)
    trainer = SimpleTrainer(model=model, data_loader=_batches(), optimizer=opt)
    with StopSignals(announce=False) as stop:
        trainer.register_hooks([PreemptionCheckpointer(stop, periodic), periodic])
        with pytest.raises(TrainingPreempted) as info:
            trainer.train(0, 10)
    assert info.value.signal_name == "SIGTERM" and info.value.iteration == 2
    assert info.value.checkpoint == str(tmp_path / "model_0000002.pth")
    assert "continue with --resume" in str(info.value)
    assert model.calls == 3  # iterations 0, 1, 2 ran; 3 did not
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    assert torch.load(tmp_path / "model_0000002.pth", weights_only=True)["iteration"] == 2
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000002.pth"]
    assert signal.getsignal(signal.SIGTERM) is _marker


def test_no_stop_without_a_signal_and_none_after_the_last_step(
    tmp_path: Path, own_handlers
) -> None:
    # A signal during the last step does not interrupt a run that is complete.
    model = _SignalsItself(at=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    periodic = PeriodicCheckpointer(Checkpointer(model, save_dir=tmp_path), period=0, max_iter=4)
    trainer = SimpleTrainer(model=model, data_loader=_batches(), optimizer=opt)
    with StopSignals(announce=False) as stop:
        trainer.register_hooks([PreemptionCheckpointer(stop, periodic), periodic])
        trainer.train(0, 4)
        assert stop.requested() == signal.SIGTERM
    assert trainer.iter == 4
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
