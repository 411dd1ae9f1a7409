"""metrics.json as a resumed run leaves it: each iteration once, torn lines dropped."""

from __future__ import annotations

import json
from pathlib import Path

from atrous.engine.events import EventStorage, JSONWriter


def _write(path: Path, iterations: range, *, start_iter: int | None = None, tag: str) -> None:
    writer = JSONWriter(str(path), start_iter=start_iter)
    storage = EventStorage(iterations.start)
    for it in iterations:
        storage.iter = it
        storage.put_scalar("total_loss", float(it), smoothing_hint=False)
        storage.put_scalar(f"run_{tag}", 1.0, smoothing_hint=False)
        writer.write(storage)
    writer.close()


def _iterations(path: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in path.read_text().splitlines()]


def test_resumed_writer_drops_what_the_interrupted_run_wrote_after_its_checkpoint(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.json"
    _write(path, range(6), tag="first")
    with path.open("a") as f:
        f.write('{"iteration": 6, "total_lo')  # cut short by a kill
    before = path.stat().st_ino

    _write(path, range(3, 8), start_iter=3, tag="resumed")
    assert _iterations(path) == list(range(8))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert all("run_first" in r for r in records[:3])
    assert all("run_resumed" in r for r in records[3:])
    assert path.stat().st_ino != before  # rewritten through a temporary file, not in place


def test_writer_without_start_iter_appends(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    _write(path, range(3), tag="a")
    _write(path, range(3), tag="b")
    assert _iterations(path) == [0, 1, 2, 0, 1, 2]
    # Resuming at 0 (no checkpoint was written yet) starts the file over.
    _write(path, range(2), start_iter=0, tag="c")
    assert _iterations(path) == [0, 1]
