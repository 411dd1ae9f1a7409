"""The evaluation report: files, and a real headless browser rendering the page."""

from __future__ import annotations

import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.evaluation import SemSegEvaluator

META = SimpleNamespace(
    name="toy",
    stuff_classes=["road", "car", "sky"],
    stuff_colors=[(128, 64, 128), (0, 0, 142), (70, 130, 180)],
    ignore_label=255,
)


def _evaluate_with_report(tmp_path):
    rng = np.random.default_rng(0)
    ev = SemSegEvaluator(META, output_dir=tmp_path / "eval", num_report_samples=2)
    ev.reset()
    for i in range(3):
        gt = np.zeros((60, 90), dtype=np.uint8)
        gt[:20] = 2
        gt[35:50, 10:40] = 1
        gt[-3:] = 255
        Image.fromarray(gt).save(tmp_path / f"gt{i}.png")
        photo = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
        Image.fromarray(photo).save(tmp_path / f"img{i}.png")
        logits = torch.from_numpy(rng.normal(size=(3, 60, 90)).astype(np.float32))
        target = torch.from_numpy(np.where(gt == 255, 0, gt)).long()
        logits.scatter_add_(0, target[None], torch.full((1, 60, 90), 2.0))
        ev.process(
            [
                {
                    "file_name": str(tmp_path / f"img{i}.png"),
                    "sem_seg_file_name": str(tmp_path / f"gt{i}.png"),
                }
            ],
            [{"sem_seg": logits}],
        )
    return ev.evaluate()["sem_seg"], tmp_path / "eval"


def test_report_files(tmp_path):
    res, out = _evaluate_with_report(tmp_path)
    html = (out / "report.html").read_text()
    files = out / "report_files"
    for name in [
        "iou_per_class.png",
        "confusion_matrix.png",
        "sample_0_image.png",
        "sample_0_overlay.png",
        "sample_1_pred.png",
        "sample_1_gt.png",
    ]:
        assert (files / name).stat().st_size > 100, name
        assert f"report_files/{name}" in html
    assert not (files / "sample_2_pred.png").exists()  # only num_report_samples kept
    assert f"{res['mIoU']:.2f}" in html and "road" in html
    with Image.open(files / "confusion_matrix.png") as img:
        assert img.width > 300 and img.height > 300


@pytest.mark.slow
def test_report_renders_in_a_headless_browser(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    _, out = _evaluate_with_report(tmp_path)
    shot = tmp_path / "shot.png"
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars", "--window-size=1400,1800", f"--screenshot={shot}",
        (out / "report.html").resolve().as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels[::7].tolist()}
    # a rendered page, not a blank one: the charts' and samples' colours are on screen
    assert len(colours) > 50
    assert (0, 0, 142) in colours or (70, 130, 180) in colours
