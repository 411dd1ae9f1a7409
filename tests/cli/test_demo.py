"""`atrous demo` served in a real subprocess and used through a real headless browser."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atrous.cli.main import main
from tests.helpers import REPO_ROOT, SMALL_REFERENCE_OVERRIDES, V3PLUS_CONFIG

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# chrome:// pages (the blank tab before the first navigation) and data: URLs use no network.
_NETWORK_SCHEMES = {"http", "https", "ws", "wss", "ftp"}


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


class _RecordingProxy(socketserver.ThreadingTCPServer):
    """An HTTP(S) proxy that forwards nothing: it records each request line and answers 502."""

    daemon_threads = True

    def __init__(self) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer.requests.append(self.rfile.readline(4096).decode("latin-1").strip())
                self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")

        super().__init__(("127.0.0.1", 0), Handler)

    def env(self) -> dict[str, str]:
        address = f"http://127.0.0.1:{self.server_address[1]}"
        names = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"]
        env = {n: address for n in names} | {n.lower(): address for n in names}
        return env | {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


@pytest.fixture
def proxy():
    server = _RecordingProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_recording_proxy_sees_outside_requests(proxy):
    # What makes the "nothing leaves the machine" check below able to fail.
    code = "import httpx; httpx.get('https://api.gradio.app/', timeout=10)"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **proxy.env()},
                   capture_output=True, timeout=60)  # fmt: skip
    assert proxy.requests == ["CONNECT api.gradio.app:443 HTTP/1.1"]


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
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # The driver's path is given, so selenium-manager has nothing to look for or download.
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.mark.slow
def test_uploaded_image_gives_the_predictors_label_map(tmp_path, reference_dir, proxy):
    """Upload through the page, download the label PNG: the Predictor's labels, pixel for pixel.

    Neither the server nor the page reaches outside 127.0.0.1: every proxy-able request of the
    demo process goes to a recording proxy (which saw none), and the browser's network log lists
    only the demo's own address.
    """
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
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), **proxy.env()}  # fmt: skip
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
        page_requests = [
            event["params"]["request"]["url"]
            for entry in driver.get_log("performance")
            if (event := json.loads(entry["message"])["message"])["method"]
            == "Network.requestWillBeSent"
        ]
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=30)
    assert "Latency:" in latency and " ms " in latency
    network = [u for u in page_requests if urllib.parse.urlsplit(u).scheme in _NETWORK_SCHEMES]
    assert len(network) > 5  # the page, its scripts, the upload, the download
    assert {urllib.parse.urlsplit(u).netloc for u in network} == {f"127.0.0.1:{port}"}, network
    assert proxy.requests == []

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


@pytest.mark.slow
def test_a_port_in_use_is_one_line_naming_the_flag(capsys, reference_dir, tmp_path, monkeypatch):
    # set here so that what the demo and gradio write into os.environ is undone afterwards
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["demo", "--port", str(port), "--examples", "0",
                     "--config-file", str(V3PLUS_CONFIG), *_model_opts(reference_dir)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    line = f"error: [Errno {errno.EADDRINUSE}] cannot serve on 127.0.0.1:{port}, it is in use"
    assert f"{line}: choose another --port" in err


def test_uploads_are_bounded_and_temporary_files_go_with_the_demo(tmp_path, reference_dir):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "demo.log"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    env |= {"PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}
    cmd = [sys.executable, "-m", "atrous.cli.main", "demo", "--port", str(port),
           "--max-upload-mb", "1", "--examples", "0",
           "--config-file", str(V3PLUS_CONFIG), *_model_opts(reference_dir)]  # fmt: skip
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_until_served(proc, url, log, timeout=180)
        assert [p.name.startswith("atrous-demo-") for p in scratch.iterdir()] == [True]

        def upload(size: int) -> int:
            boundary = "atrousboundary"
            body = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                f'filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
            ).encode()
            body += b"\0" * size + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
            request = urllib.request.Request(
                url + "gradio_api/upload", data=body, method="POST",
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return response.status
            except urllib.error.HTTPError as error:
                return error.code

        assert upload(1000) == 200
        assert upload(3 << 20) == 413  # over --max-upload-mb 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert list(scratch.iterdir()) == []  # its folder, Gradio's cache included, is gone
