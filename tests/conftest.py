"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from atrous.config import CfgNode
from tests.helpers import (
    REPO_ROOT,
    SMALL_REFERENCE_OVERRIDES,
    V3PLUS_CONFIG,
    find_reference_dir,
    load_config,
    reference_bundle_overrides,
)

# CI runs the property tests on a fixed sequence of examples so that a red build always reproduces;
# locally every run explores new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Directory with the original implementation's reference outputs."""
    return find_reference_dir()


@pytest.fixture
def tiny_cfg() -> CfgNode:
    """A small-width DeepLabV3+ R50 (the reference's overrides): 19 classes, BN, no crop."""
    return load_config(V3PLUS_CONFIG, SMALL_REFERENCE_OVERRIDES)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def synthetic_cityscapes_root(tmp_path_factory) -> Path:
    """A small synthetic dataset in the Cityscapes layout: 8 train + 4 val images of 128x256.

    Returns the dataset folder (holding leftImg8bit/ and gtFine/); it is named "synthetic", so
    setting ATROUS_DATASETS to its parent makes synthetic_sem_seg_{train,val} resolve to it.
    Read-only: tests that modify files must copy it first.
    """
    from atrous.data.datasets.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("datasets") / "synthetic"
    return generate_dataset(root, num_train=8, num_val=4, size=(128, 256), seed=0)


_HOLD_LOCK = (
    "import sys; from atrous.utils.folders import OutputDirLock; "
    "lock = OutputDirLock(sys.argv[1], command=sys.argv[2]); lock.acquire(); "
    "print('locked', flush=True); sys.stdin.read(); lock.release()"
)


@pytest.fixture
def lock_holder():
    """Factory: start another process that holds a folder's output lock for the test's duration.

    ``start(folder, command="another run")`` returns the process (its ``pid`` is what refusals
    must name; `command` is what its lock record says); it releases at teardown (or was killed).
    """
    started: list[subprocess.Popen] = []

    def start(folder: Path, command: str = "another run") -> subprocess.Popen:
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(folder), command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in started:
        proc.stdin.close()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def reference_bundle(tmp_path_factory, reference_dir) -> Path:
    """A model bundle of the reference model (`reference_bundle_overrides`); read-only: tests
    that change files work on a copy."""
    from atrous.checkpoint import Checkpointer
    from atrous.deploy.bundle_writer import write_bundle
    from atrous.modeling import build_model

    cfg = load_config(V3PLUS_CONFIG, reference_bundle_overrides(reference_dir))
    model = build_model(cfg)
    assert Checkpointer(model).load(cfg.MODEL.WEIGHTS, strict=True).ok
    return write_bundle(tmp_path_factory.mktemp("bundles") / "small_v3plus", cfg=cfg, model=model)


@pytest.fixture(scope="session")
def reference_exports(tmp_path_factory, reference_dir) -> dict[str, Path]:
    """The model of `reference_bundle` exported once per session (read-only):

    * ``"onnx"``: ``model.onnx`` (`export_onnx`);
    * ``"openvino"``: ``model.xml`` + ``model.bin``, converted from it by ``openvino`` with
      float32 weights;
    * ``"folder"``: a folder holding ``config.yaml`` and ``model.xml`` + ``model.bin``, as
      ``atrous quantize`` writes its output.
    """
    from atrous.checkpoint import Checkpointer
    from atrous.deploy.export import export_onnx
    from atrous.deploy.openvino import import_openvino
    from atrous.modeling import build_model

    ov = import_openvino()  # without its telemetry, as atrous imports it
    cfg = load_config(V3PLUS_CONFIG, reference_bundle_overrides(reference_dir))
    model = build_model(cfg)
    assert Checkpointer(model).load(cfg.MODEL.WEIGHTS, strict=True).ok
    root = tmp_path_factory.mktemp("exports")
    onnx_file = export_onnx(model.eval(), root / "model.onnx")
    folder = root / "folder"
    folder.mkdir()
    # save_model would store float16 weights by default; the parity tests need float32 ones.
    ir = ov.convert_model(str(onnx_file))
    ov.save_model(ir, str(root / "model.xml"), compress_to_fp16=False)
    ov.save_model(ir, str(folder / "model.xml"), compress_to_fp16=False)
    (folder / "config.yaml").write_text(cfg.dump(), encoding="utf-8")
    return {"onnx": onnx_file, "openvino": root / "model.xml", "folder": folder}


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size="1m", readonly=False) -> Path``: a real small tmpfs, unmounted afterwards.

    A full disk and a read-only file system cannot be faked with permissions when the tests run
    as root (root ignores them); a tmpfs mount is the real thing. Skipped where mounting is not
    allowed (not root, no CAP_SYS_ADMIN in a container).
    """
    import subprocess

    mounted: list[Path] = []

    def mount(size: str = "1m", *, readonly: bool = False) -> Path:
        target = tmp_path / f"tmpfs{len(mounted)}"
        target.mkdir()
        options = f"size={size}" + (",ro" if readonly else "")
        try:
            proc = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except FileNotFoundError:
            pytest.skip("no mount command here: cannot make a real full or read-only disk")
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)
