"""Downloads against a real HTTP server on 127.0.0.1: progress, cache, checksum, failures."""

from __future__ import annotations

import hashlib
import pickle
import socket

import numpy as np
import pytest

from atrous.checkpoint import (
    Checkpointer,
    ChecksumMismatchError,
    DownloadError,
    cached_file_path,
    download,
    expected_sha256_prefix,
)

from .toy import ToySegmentor, numpy_state


def _files_in(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _hashed_name(stem: str, data: bytes) -> str:
    return f"{stem}_{hashlib.sha256(data).hexdigest()[:6]}.pkl"


def test_checksum_in_file_name():
    assert expected_sha256_prefix("model_final_a8a355.pkl") == "a8a355"
    assert expected_sha256_prefix("model_final_280758.pkl") == "280758"
    assert expected_sha256_prefix("R-103.pkl") is None
    assert expected_sha256_prefix("model_0000999.pth") is None  # 7 digits: an iteration


def test_download_progress_and_cache_reuse(zoo_env, capsys):
    server, cache = zoo_env
    data = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)
    name = _hashed_name("model_final", data)
    server.files[f"/DeepLab/{name}"] = data

    path = download(f"detectron2://DeepLab/{name}")
    assert path == cache / "checkpoints" / "detectron2" / "DeepLab" / name
    assert path.read_bytes() == data
    assert server.requests == [f"/DeepLab/{name}"]
    err = capsys.readouterr().err
    assert name in err and "100%" in err  # the tqdm bar reached the end

    # Reused: no second request, whatever spelling of the URL.
    assert download(f"detectron2://DeepLab/{name}") == path
    assert download(f"https://dl.fbaipublicfiles.com/detectron2/DeepLab/{name}") == path
    assert server.requests == [f"/DeepLab/{name}"]
    assert _files_in(cache) == [f"checkpoints/detectron2/DeepLab/{name}"]


def test_full_http_url(zoo_env):
    server, cache = zoo_env
    server.files["/some/dir/weights.pth"] = b"abc"
    url = f"{server.base_url}some/dir/weights.pth"
    path = download(url, progress=False)
    assert path.read_bytes() == b"abc" and path == cached_file_path(url)
    assert path.is_relative_to(cache)


def test_checksum_mismatch_deletes_the_download(zoo_env):
    server, cache = zoo_env
    server.files["/DeepLab/model_final_a8a355.pkl"] = b"not the published file"
    with pytest.raises(ChecksumMismatchError) as info:
        download("detectron2://DeepLab/model_final_a8a355.pkl", progress=False)
    message = str(info.value)
    assert "a8a355" in message and hashlib.sha256(b"not the published file").hexdigest()[:6] in (
        message
    )
    assert "deleted" in message
    assert _files_in(cache) == []


def test_404_names_the_url(zoo_env):
    server, cache = zoo_env
    with pytest.raises(DownloadError) as info:
        download("detectron2://DeepLab/missing.pkl", progress=False)
    message = str(info.value)
    assert "HTTP 404" in message and f"{server.base_url}DeepLab/missing.pkl" in message
    assert "ATROUS_MODEL_ZOO_URL" in message
    assert _files_in(cache) == []


def test_interrupted_download_leaves_nothing(zoo_env):
    server, cache = zoo_env
    server.files["/DeepLab/R-103.pkl"] = b"x" * 100_000
    server.truncate["/DeepLab/R-103.pkl"] = 40_000
    with pytest.raises(DownloadError, match="interrupted after 40000 of 100000 bytes"):
        download("detectron2://DeepLab/R-103.pkl", progress=False)
    assert _files_in(cache) == []
    # A later, complete transfer succeeds.
    del server.truncate["/DeepLab/R-103.pkl"]
    assert download("detectron2://DeepLab/R-103.pkl", progress=False).stat().st_size == 100_000


def test_unreachable_server(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("ATROUS_MODEL_ZOO_URL", f"http://127.0.0.1:{port}/")
    monkeypatch.setenv("ATROUS_CACHE", str(tmp_path))
    with pytest.raises(DownloadError, match="download the file elsewhere and pass its local path"):
        download("detectron2://DeepLab/R-103.pkl", progress=False)


def test_checkpointer_loads_zoo_name_and_url(zoo_env):
    server, cache = zoo_env
    source = ToySegmentor()
    backbone = {k[len("backbone.") :]: v for k, v in numpy_state(source).items() if "backbone" in k}
    blob = pickle.dumps({"model": backbone, "__author__": "x", "matching_heuristics": True}, 2)
    server.files["/DeepLab/R-103.pkl"] = blob

    report = Checkpointer(ToySegmentor()).load("R-103")
    assert report.source == "R-103"
    assert report.path == str(cache / "checkpoints" / "detectron2" / "DeepLab" / "R-103.pkl")
    assert len(report.matched) == len(backbone) and report.unexpected == []

    report = Checkpointer(ToySegmentor()).load("detectron2://DeepLab/R-103.pkl")
    assert len(report.matched) == len(backbone)
    assert server.requests == ["/DeepLab/R-103.pkl"]  # the second load used the cache

    name = _hashed_name("model_final", blob)
    server.files[f"/custom/{name}"] = blob
    report = Checkpointer(ToySegmentor()).load(f"{server.base_url}custom/{name}")
    assert len(report.matched) == len(backbone)


def test_corrupt_cached_file_names_the_cache_path(zoo_env):
    server, cache = zoo_env
    server.files["/DeepLab/R-103.pkl"] = b"\x80\x02}q\x00(X\x05"  # a cut pickle
    with pytest.raises(Exception, match=r"R-103\.pkl is truncated or corrupt") as info:
        Checkpointer(ToySegmentor()).load("R-103")
    assert str(cache) in str(info.value) and "Delete it" in str(info.value)
