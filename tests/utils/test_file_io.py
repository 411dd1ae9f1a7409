"""Atomic writes: the destination holds the old content or the new one, never a fragment."""

from __future__ import annotations

import json
import math

import pytest

from atrous.utils.file_io import atomic_write, atomic_write_json, atomic_write_text


def test_replaces_content_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "sub" / "file.txt"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]


def test_failure_while_writing_keeps_the_previous_file(tmp_path):
    path = tmp_path / "file.bin"
    atomic_write_text(path, "intact")

    def half_then_crash(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_crash)
    assert path.read_text() == "intact"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_json_writes_nan_as_null(tmp_path):
    path = atomic_write_json(tmp_path / "m.json", {"mIoU": math.nan, "per_class": [1.0, math.nan]})
    assert json.loads(path.read_text()) == {"mIoU": None, "per_class": [1.0, None]}


def test_a_full_disk_is_an_os_error_naming_the_destination(tmpfs):
    import errno

    import torch

    disk = tmpfs("64k")
    path = disk / "model.pth"
    # torch.save reports the full disk as a RuntimeError of its own, with the OSError as context.
    with pytest.raises(OSError) as info:
        atomic_write(path, lambda f: torch.save({"w": torch.zeros(100_000)}, f))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert list(disk.iterdir()) == []  # no temporary file left behind


def test_check_writable_dir_creates_and_probes(tmp_path, tmpfs):
    import errno

    from atrous.utils.file_io import check_writable_dir

    target = tmp_path / "a" / "b"
    assert check_writable_dir(target) == target and list(target.iterdir()) == []
    read_only = tmpfs("64k", readonly=True)
    for path in (read_only, read_only / "sub"):
        with pytest.raises(OSError) as info:
            check_writable_dir(path)
        assert info.value.errno == errno.EROFS and info.value.filename == str(path)


def test_publish_folder_replaces_the_old_folder_whole(tmp_path):
    from atrous.utils.file_io import current_umask, publish_folder, staging_dir

    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    with staging_dir(tmp_path, prefix=".out.") as staging:
        (staging / "new.txt").write_text("new")
        assert publish_folder(staging, output) == output
    assert [p.name for p in output.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing staged or set aside is left
    assert output.stat().st_mode & 0o777 == 0o777 & ~current_umask()
