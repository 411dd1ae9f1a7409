"""`atrous demo` served in a real subprocess and used through a real headless browser."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atrous.cli.main import main
from tests.conftest import REPO_ROOT, SMALL_REFERENCE_OVERRIDES, V3PLUS_CONFIG

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _model_opts(reference_dir: Path) -> list[str]:
    return [
        *SMALL_REFERENCE_OVERRIDES,
        "MODEL.WEIGHTS",
        str(reference_dir / "small_v3plus.pkl"),
        "MODEL.DEVICE",
        "cpu",
        "INPUT.MIN_SIZE_TEST",
        "0",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_served(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the demo did not answer on {url} within {timeout} s:\n{log.read_text()[-3000:]}")


def _browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--window-size=1400,1600", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]  # fmt: skip
    for flag in flags:
        options.add_argument(flag)
    # The driver's path is given, so selenium-manager has nothing to look for or download.
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.mark.slow
def test_uploaded_image_gives_the_predictors_label_map(tmp_path, reference_dir):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(
            f"needs Debian's chromium and chromedriver at {CHROMIUM} and {CHROMEDRIVER} "
            "(apt-get install -y chromium chromium-driver)"
        )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from atrous.config import get_cfg
    from atrous.evaluation.metadata import model_metadata
    from atrous.inference import Predictor
    from atrous.inference.demo import area_table

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 72, 3), dtype=np.uint8)
    image_path = tmp_path / "street.png"
    Image.fromarray(image).save(image_path)

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "demo.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1",
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}  # fmt: skip
    cmd = [sys.executable, "-m", "atrous.cli.main", "demo", "--port", str(port),
           "--config-file", str(V3PLUS_CONFIG), *_model_opts(reference_dir)]  # fmt: skip
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    driver = None
    try:
        _wait_until_served(proc, url, log, timeout=180)
        driver = _browser(tmp_path / "profile")
        driver.get(url)
        file_input = WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#input-image input[type=file]")
        )
        file_input.send_keys(str(image_path))
        link = WebDriverWait(driver, 120).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#label-file a[href]")
        )
        href = link.get_attribute("href")
        latency = driver.find_element(By.ID, "latency").text
        table = driver.find_element(By.ID, "areas").text
        assert driver.find_element(By.CSS_SELECTOR, "#overlay img").get_attribute("src")
        assert href.startswith(url), href  # served by the demo itself, nothing else
        with urllib.request.urlopen(href, timeout=30) as response:
            labels = np.asarray(Image.open(io.BytesIO(response.read())))
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=30)
    assert "Latency:" in latency and " ms " in latency

    # The demo's CPU default is the fast path: the same config, in this process.
    cfg = get_cfg()
    cfg.merge_from_file(str(V3PLUS_CONFIG))
    cfg.merge_from_list([*_model_opts(reference_dir), "TEST.FAST.ENABLED", "True"])
    expected = Predictor(cfg)(image).labels
    assert labels.shape == (48, 72)
    np.testing.assert_array_equal(labels, expected)
    # the area table shows the largest class with its share
    meta, _ = model_metadata(cfg, None)
    _, name, share = area_table(expected, meta.stuff_classes)[0]
    assert name in table and f"{share:g}" in table, table


def test_missing_gradio_is_one_line_naming_the_extra(monkeypatch, capsys, reference_dir):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setitem(sys.modules, "gradio", None)
    code = main(["demo", "--config-file", str(V3PLUS_CONFIG), *_model_opts(reference_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: the demo needs gradio: pip install 'atrous[demo]'"]


def test_examples_come_from_the_test_datasets_on_disk(synthetic_cityscapes_root, monkeypatch):
    from atrous.cli.demo import example_images
    from atrous.config import get_cfg

    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent / "none"))
    cfg = get_cfg()
    cfg.DATASETS.TEST = ("synthetic_sem_seg_val",)
    assert example_images(cfg, 3) == []  # not on disk: no examples, no error
    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent))
    found = example_images(cfg, 3)
    val = sorted(str(p) for p in (synthetic_cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))
    assert len(found) == 3 and set(found) <= set(val)
    assert example_images(cfg, 0) == []
