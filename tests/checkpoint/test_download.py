"""Downloads against a real HTTP server on 127.0.0.1: progress, cache, checksum, failures."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from atrous.checkpoint import (
    Checkpointer,
    ChecksumMismatchError,
    DownloadError,
    cached_file_path,
    download,
    expected_sha256_prefix,
    model_zoo,
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
    assert expected_sha256_prefix("resnet101-cd907fc2.pth") == "cd907fc2"  # torchvision's
    assert expected_sha256_prefix("deeplabv3_resnet50_coco-cd0a2569.pth") == "cd0a2569"
    assert expected_sha256_prefix("model-0000999.pth") is None


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
    with pytest.raises(DownloadError) as info:
        download("detectron2://DeepLab/R-103.pkl", progress=False)
    message = str(info.value)
    # what to do offline: the URL, where to put the file, and how to do without it
    assert f"http://127.0.0.1:{port}/DeepLab/R-103.pkl" in message
    assert str(tmp_path / "checkpoints" / "detectron2" / "DeepLab" / "R-103.pkl") in message
    assert 'MODEL.WEIGHTS ""' in message and "pass its local path" in message


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


# ---------------------------------------------------------------- torchvision's and timm's files

TV_REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "torchvision"


def _torchvision_pth(tmp_path) -> bytes:
    """A file as torchvision publishes them: ``torch.save(model.state_dict())``, a zip of pickles
    holding an OrderedDict of tensors with its ``_metadata`` attribute."""
    state = collections.OrderedDict(load_file(TV_REFERENCE / "resnet_classifier.safetensors"))
    state._metadata = collections.OrderedDict({"": {"version": 1}, "bn1": {"version": 2}})
    path = tmp_path / "state.pth"
    torch.save(state, path)
    return path.read_bytes()


def _narrow_resnet():
    from atrous.config import get_cfg
    from atrous.modeling import build_backbone

    from ..modeling.test_torchvision_parity import NARROW_RESNET

    cfg = get_cfg()
    cfg.merge_from_list(NARROW_RESNET)
    return build_backbone(cfg)


@pytest.fixture
def torchvision_mirror(zoo_env, monkeypatch):
    server, cache = zoo_env
    monkeypatch.setenv("ATROUS_TORCHVISION_URL", f"{server.base_url}models/")
    monkeypatch.setenv("ATROUS_HF_URL", f"{server.base_url}hf/")
    return server, cache


def test_torchvision_file_downloads_verifies_and_loads_by_name(torchvision_mirror, tmp_path):
    server, cache = torchvision_mirror
    data = _torchvision_pth(tmp_path)
    name = f"resnet50-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.files[f"/models/{name}"] = data
    url = f"https://download.pytorch.org/models/{name}"

    report = Checkpointer(_narrow_resnet()).load(url)
    assert server.requests == [f"/models/{name}"]
    # cached where the published URL says, whichever mirror served it
    assert report.path == str(cache / "checkpoints" / "download.pytorch.org" / "models" / name)
    assert report.missing == [] and report.unexpected == ["fc.bias", "fc.weight"]
    Checkpointer(_narrow_resnet()).load(url)
    assert len(server.requests) == 1  # the second load used the cache


def test_torchvision_checksum_in_the_name_is_checked(torchvision_mirror):
    server, cache = torchvision_mirror
    server.files["/models/resnet101-cd907fc2.pth"] = b"not the published file"
    with pytest.raises(ChecksumMismatchError, match="the file name promises a SHA-256 starting"):
        download("https://download.pytorch.org/models/resnet101-cd907fc2.pth", progress=False)
    assert _files_in(cache) == []


def test_zoo_name_of_a_torchvision_file_checks_its_whole_sha256(
    torchvision_mirror, tmp_path, monkeypatch
):
    server, cache = torchvision_mirror
    data = _torchvision_pth(tmp_path)
    digest = hashlib.sha256(data).hexdigest()
    name = f"resnet50-{digest[:8]}.pth"
    server.files[f"/models/{name}"] = data
    entry = model_zoo.ZooEntry(
        "torchvision/resnet50", f"https://download.pytorch.org/models/{name}", "test", None,
        digest[:8] + "0" * 56,  # a record that the name's prefix alone would not catch
    )  # fmt: skip
    monkeypatch.setitem(model_zoo.MODEL_ZOO, "torchvision/resnet50", entry)
    with pytest.raises(ChecksumMismatchError, match="the model zoo records"):
        Checkpointer(_narrow_resnet()).load("torchvision/resnet50")
    assert _files_in(cache) == []
    monkeypatch.setitem(
        model_zoo.MODEL_ZOO, "torchvision/resnet50", dataclasses.replace(entry, sha256=digest)
    )
    report = Checkpointer(_narrow_resnet()).load("torchvision/resnet50")
    assert report.unexpected == ["fc.bias", "fc.weight"] and report.missing == []


def test_hugging_face_safetensors_checked_against_the_announced_sha256(torchvision_mirror):
    server, _ = torchvision_mirror
    data = (TV_REFERENCE / "resnet_classifier.safetensors").read_bytes()
    path = "/hf/timm/resnet50.a1_in1k/resolve/main/model.safetensors"
    server.files[path] = data
    server.headers[path] = {"ETag": '"' + "0" * 64 + '"'}
    url = model_zoo.get_checkpoint_url("timm/resnet50.a1_in1k")
    with pytest.raises(ChecksumMismatchError, match="the server announced"):
        download(url, progress=False)
    server.headers[path] = {"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"'}
    report = Checkpointer(_narrow_resnet()).load("timm/resnet50.a1_in1k")
    assert report.path.endswith(
        "huggingface.co/timm/resnet50.a1_in1k/resolve/main/model.safetensors"
    )
    assert report.missing == [] and report.unexpected == ["fc.bias", "fc.weight"]
