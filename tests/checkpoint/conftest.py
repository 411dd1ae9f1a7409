"""Fixtures for the checkpoint tests: a toy model with detectron2's names, a local HTTP server."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .toy import ToySegmentor


@pytest.fixture
def toy() -> ToySegmentor:
    return ToySegmentor()


@dataclass
class LocalServer:
    """Files served by a real HTTP server on 127.0.0.1, and the paths requested so far."""

    base_url: str
    files: dict[str, bytes] = field(default_factory=dict)
    # URL path -> number of bytes to send before closing, while announcing the full length.
    truncate: dict[str, int] = field(default_factory=dict)
    # URL path -> extra response headers (e.g. an ETag).
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    state = LocalServer(base_url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            for name, value in state.headers.get(self.path, {}).items():
                self.send_header(name, value)
            self.end_headers()
            cut = state.truncate.get(self.path)
            self.wfile.write(body if cut is None else body[:cut])
            if cut is not None:
                self.close_connection = True

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def zoo_env(http_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point detectron2:// at the local server and the cache at a fresh directory."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ATROUS_MODEL_ZOO_URL", http_server.base_url)
    monkeypatch.setenv("ATROUS_CACHE", str(cache))
    return http_server, cache
