"""`atrous check-dataset` as a real process on folders seeded with each kind of defect."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "atrous.cli.main", "check-dataset", *args, "--no-progress"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _pair(root: Path, name: str, label: np.ndarray, *, size=(16, 24)) -> tuple[str, str]:
    rng = np.random.RandomState(zlib.crc32(name.encode()))
    image = rng.randint(0, 255, (*size, 3)).astype(np.uint8)
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    Image.fromarray(label.astype(np.uint8)).save(root / "masks" / f"{name}.png")
    return f"images/{name}.png", f"masks/{name}.png"


def _dataset(root: Path, *, defects: bool) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    good = np.zeros((16, 24), np.uint8)
    good[:, 12:] = 1
    good[:4, :4] = 2
    lines = [_pair(root, name, good) for name in ("good1", "good2")]
    if defects:
        lines.append(_pair(root, "corrupt_image", good))
        data = (root / "images" / "corrupt_image.png").read_bytes()
        (root / "images" / "corrupt_image.png").write_bytes(data[: len(data) // 2])
        lines.append(_pair(root, "corrupt_mask", good))
        (root / "masks" / "corrupt_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        lines.append(_pair(root, "mismatch", good[:, :20], size=(16, 24)))
        out_of_range = good.copy()
        out_of_range[0, 0] = 7
        lines.append(_pair(root, "out_of_range", out_of_range))
        lines.append(_pair(root, "empty", np.full((16, 24), 255)))
        lines.append(_pair(root, "copy", good))
        shutil.copy(root / "images" / "good1.png", root / "images" / "copy.png")
        lines.append(lines[1])  # good2 listed twice
    (root / "train.txt").write_text("".join(f"{i} {m}\n" for i, m in lines))
    spec = {
        "classes": ["bg", "a", "b"],
        "ignore_value": 255,
        "splits": {"train": {"list": "train.txt"}},
    }
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    return root / "data.yaml"


@pytest.mark.slow
def test_every_defective_file_is_named_and_the_exit_status_is_1(tmp_path):
    data = _dataset(tmp_path / "d", defects=True)
    proc = _check(f"{data}:train", "--workers", "2", "--output", "report", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    expected = {
        ("unreadable", "images/corrupt_image.png"),
        ("unreadable", "masks/corrupt_mask.png"),
        ("size_mismatch", "masks/mismatch.png"),
        ("out_of_range", "masks/out_of_range.png"),
        ("empty", "masks/empty.png"),
        ("duplicate_image", "images/copy.png"),
        ("duplicate_entry", "images/good2.png"),
    }
    root = str(tmp_path / "d") + "/"
    report = json.loads((tmp_path / "report" / "dataset_report.json").read_text())
    found = {(p["kind"], p["file"].replace(root, "")) for p in report["problems"]}
    assert found == expected
    for kind, file in expected:
        assert f"[{kind}] {root}{file}" in proc.stdout, (kind, file, proc.stdout)
    assert "values 7 (1 pixels) are neither a class (0..2) nor the ignore label 255" in proc.stdout
    assert "the same file content as " + root + "images/good1.png" in proc.stdout
    assert "7 defects in 7 files" in proc.stderr
    assert report["num_images"] == 9


def test_a_clean_dataset_exits_0_with_table_report_and_chart(tmp_path, monkeypatch, capsys):
    from atrous.cli.main import main

    data = _dataset(tmp_path / "d", defects=False)
    monkeypatch.chdir(tmp_path)
    assert main(["check-dataset", str(data), "--workers", "0", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "no defects found in 2 images" in stdout
    # per image: bg 176, a 192, b 16 of 384 pixels
    assert "  0  bg       45.833        2" in stdout
    out = tmp_path / "dataset_check" / "data.yaml"
    report = json.loads((out / "dataset_report.json").read_text())
    assert report["problems"] == [] and report["labelled_pixels"] == 768
    assert [c["pixels"] for c in report["classes"]] == [352, 384, 32]
    assert [c["images"] for c in report["classes"]] == [2, 2, 2]
    assert set(report["class_weights"]) == {
        "median_frequency",
        "inverse_sqrt_frequency",
        "definitions",
    }
    with Image.open(out / "class_frequency.png") as chart:
        assert chart.format == "PNG" and chart.width > 100


def test_an_unknown_dataset_exits_1_with_the_catalog_message(capsys):
    from atrous.cli.main import main

    assert main(["check-dataset", "no_such_dataset"]) == 1
    assert "unknown dataset 'no_such_dataset'" in capsys.readouterr().err
