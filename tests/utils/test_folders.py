"""The output-folder lock against real processes, the writability checks and safe folder names."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atrous.utils.folders import (
    LOCK_NAME,
    OutputDirError,
    OutputDirLock,
    OutputDirLockedError,
    _process_start_ticks,
    check_free_space,
    check_writable,
    safe_dataset_dirname,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def holder(tmp_path: Path, lock_holder):
    """A process that locks a folder; yields (folder, process)."""
    folder = tmp_path / "run"
    proc = lock_holder(folder, "holder --of the lock")
    yield folder, proc
    if proc.poll() is None:
        proc.kill()


def _record(folder: Path, **fields) -> None:
    base = {"pid": 1, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00",
            "command": "atrous train --config-file old.yaml"}  # fmt: skip
    (folder / LOCK_NAME).write_text(json.dumps({**base, **fields}))


def _exited_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def test_a_held_folder_is_refused_naming_the_holder(holder) -> None:
    folder, proc = holder
    with pytest.raises(OutputDirLockedError) as info:
        OutputDirLock(folder).acquire()
    message = str(info.value)
    assert f"PID {proc.pid} on host {socket.gethostname()}" in message
    assert "holder --of the lock" in message and "started 20" in message
    assert info.value.holder["pid"] == proc.pid
    # A clean release removes the file and frees the folder.
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert not (folder / LOCK_NAME).exists()
    with OutputDirLock(folder) as lock:
        assert lock.held and json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_NAME).exists()


def test_lock_of_a_killed_process_is_taken_over_with_a_warning(holder) -> None:
    folder, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (folder / LOCK_NAME).exists()  # a crash leaves the record behind
    lock = OutputDirLock(folder)
    note = lock.acquire()
    assert note is not None and f"PID {proc.pid}" in note and "no longer runs" in note
    lock.release()


def test_stale_record_of_a_dead_pid_is_taken_over(tmp_path: Path) -> None:
    pid = _exited_pid()
    _record(tmp_path, pid=pid)
    lock = OutputDirLock(tmp_path, command="new run")
    note = lock.acquire()
    assert f"PID {pid}" in note and "atrous train --config-file old.yaml" in note
    record = json.loads((tmp_path / LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["command"] == "new run"
    lock.release()


def test_record_of_a_live_process_is_refused_even_without_its_flock(tmp_path: Path) -> None:
    # A file system that does not carry flocks between clients leaves only the record.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _record(tmp_path, pid=sleeper.pid, proc_start=_process_start_ticks(sleeper.pid))
        with pytest.raises(OutputDirLockedError, match=rf"PID {sleeper.pid} on host"):
            OutputDirLock(tmp_path).acquire()
        # The same PID with another start time is a reused PID: the record is stale.
        _record(tmp_path, pid=sleeper.pid, proc_start=-5)
        lock = OutputDirLock(tmp_path)
        assert "no longer runs" in lock.acquire()
        lock.release()
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)


def test_record_from_another_host_is_refused_with_how_to_remove_it(tmp_path: Path) -> None:
    _record(tmp_path, pid=_exited_pid(), host="gpu-node-17")
    with pytest.raises(OutputDirLockedError) as info:
        OutputDirLock(tmp_path).acquire()
    message = str(info.value)
    assert "on host gpu-node-17" in message and "started 2026-01-01" in message
    assert f"delete {tmp_path / LOCK_NAME}" in message
    assert (tmp_path / LOCK_NAME).exists()  # untouched


def test_unwritable_or_full_folders_fail_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputDirError, match=r"OUTPUT_DIR .*a_file/out cannot be created"):
        check_writable(blocker / "out")
    with pytest.raises(OutputDirError, match=r"--output .*a_file exists and is not a folder"):
        check_writable(blocker, label="--output")
    with pytest.raises(OutputDirError, match=r"only [\d,.]+ MB free on OUTPUT_DIR .*needs ~"):
        check_free_space(tmp_path, 10**18, purpose="a checkpoint of this model")
    check_writable(tmp_path / "new" / "deep")
    assert (tmp_path / "new" / "deep").is_dir() and not list((tmp_path / "new" / "deep").iterdir())


def test_safe_dataset_dirname_examples() -> None:
    assert safe_dataset_dirname("cityscapes_fine_sem_seg_val") == "cityscapes_fine_sem_seg_val"
    name = safe_dataset_dirname("/data/mri/d.yaml:val")
    assert re.fullmatch(r"d\.yaml_val-[0-9a-f]{8}", name)
    assert safe_dataset_dirname("/data/mri/d.yaml:val") == name  # stable
    assert safe_dataset_dirname("/other/d.yaml:val") != name
    assert safe_dataset_dirname("data/cracks.yaml").startswith("cracks.yaml-")
    for bad in ("..", ".", "../../etc", "/", "", "a/../../b", "C:\\data\\x.yaml:val"):
        out = safe_dataset_dirname(bad)
        assert "/" not in out and "\\" not in out and ":" not in out and out not in (".", "..")


@given(st.text(max_size=300))
def test_safe_dataset_dirname_stays_one_plain_component(name: str) -> None:
    out = safe_dataset_dirname(name)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", out) and len(out) <= 100
    root = "/some/output/inference"
    assert os.path.dirname(os.path.normpath(os.path.join(root, out))) == root
