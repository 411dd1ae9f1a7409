"""OpenVINO IR export: dynamic sizes, the version stamp, parity with PyTorch, atomic writes."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import atrous
from atrous.deploy.openvino import (
    export_openvino,
    import_openvino,
    openvino_core,
    read_openvino_metadata,
)
from tests.helpers import build_reference_model, run_cli_without

# OpenVINO imported as atrous imports it, so that the test run reports no telemetry either.
ov = import_openvino()

REPO = Path(__file__).resolve().parents[2]


def _resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)
    return resized[0].round().clamp(0, 255)


def _compile_f32(path: Path):
    # The CPU plugin runs float32 layers in bf16 where the processor has it, unless told not to;
    # parity is about the graph, so compare in float32.
    return openvino_core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


@pytest.mark.slow
def test_openvino_ir_matches_pytorch_at_two_sizes(
    tiny_cfg, reference_dir, reference_image, tmp_path
):
    # The (64, 128) crop gives the fixed (4, 8) image-pooling window sliding over larger maps,
    # the case the shipped configs have at test time.
    tiny_cfg.merge_from_list(["INPUT.CROP.ENABLED", "True", "INPUT.CROP.SIZE", "(64, 128)"])
    model = build_reference_model(tiny_cfg, reference_dir)
    xml = export_openvino(model, tmp_path / "out" / "model.xml", metadata={"classes": "a,b"})
    assert xml == tmp_path / "out" / "model.xml"
    assert sorted(p.name for p in xml.parent.iterdir()) == ["model.bin", "model.xml"]
    assert read_openvino_metadata(xml) == {
        "atrous_version": atrous.__version__,
        "torch_version": torch.__version__,
        "classes": "a,b",
    }
    ir = openvino_core().read_model(str(xml))
    shape = ir.input(0).get_partial_shape()
    assert [d.is_dynamic for d in shape] == [True, False, True, True] and shape[1].get_length() == 3
    assert ir.input(0).get_any_name() == "images" and ir.output(0).get_any_name() == "logits"
    # fp32 weights: no f16 constants (compress_to_fp16 off).
    assert not [op for op in ir.get_ops() if op.get_type_name() == "Constant"
                and op.get_element_type() == ov.Type.f16]  # fmt: skip

    compiled = _compile_f32(xml)
    for image in (reference_image.float(), _resized(reference_image, (150, 300))):
        with torch.no_grad():
            expected = model([{"image": image}])[0]["sem_seg"].numpy()
        got = compiled(image[None].numpy())[0][0]
        assert got.shape == expected.shape
        # Relative to the logit scale: OpenVINO's convolutions sum in another order than
        # PyTorch's (measured 4e-4 on logits of magnitude 8, i.e. 5e-5 of the scale).
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_openvino_export_needs_an_xml_path(reference_model, tmp_path):
    with pytest.raises(ValueError, match=r"\.xml"):
        export_openvino(reference_model, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_failed_openvino_export_leaves_no_files(reference_model, tmpfs):
    # A real full disk: the staged ONNX file (2.5 MB) fits, the IR's weights next to it do not.
    disk = tmpfs("4m")
    with pytest.raises(OSError, match=r"could not write .*model\.xml.*disk may be full"):
        export_openvino(reference_model, disk / "model.xml")
    assert list(disk.iterdir()) == []


def test_missing_openvino_names_the_extra(tmp_path):
    # A process where `import openvino` fails, as on an install without the extra.
    config = REPO / "configs" / "Synthetic" / "deeplab_v3_plus_R_50_quickstart.yaml"
    args = ["export", "--format", "openvino", "--output", str(tmp_path / "m.xml"),
            "--config-file", str(config)]  # fmt: skip
    proc = run_cli_without("openvino", args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'atrous[openvino]'" in lines[0], proc.stderr
    assert "'openvino'" in lines[0]
    assert list(tmp_path.iterdir()) == []


# A fresh interpreter (NNCF turns its telemetry off by itself under pytest) whose user has opted
# in to OpenVINO's telemetry (a consent file holding "1" in its own HOME). It watches the real
# openvino_telemetry: a thread started from it (its sender pool), a fork from it (its GA4 backend
# sends from a forked process) and any urllib request. "fresh": atrous imports OpenVINO and NNCF
# first; "preimported": the program imported openvino_telemetry, OpenVINO and NNCF itself first,
# which must be seen sending (so the watch works), then atrous exports and quantizes.
_TELEMETRY_WATCH = textwrap.dedent(
    """
    import json, os, sys, threading, time, traceback

    mode, cfg_file, out = sys.argv[1:]
    seen = []

    def from_telemetry():
        marker = os.sep + "openvino_telemetry" + os.sep
        return any(marker in frame.filename for frame in traceback.extract_stack())

    start = threading.Thread.start

    def watched_start(self):
        if from_telemetry():
            seen.append("thread " + self.name)
        return start(self)

    threading.Thread.start = watched_start
    os.register_at_fork(before=lambda: from_telemetry() and seen.append("fork"))
    sys.addaudithook(lambda event, args: event == "urllib.Request" and seen.append(event))

    if mode == "preimported":
        import openvino, nncf, openvino_telemetry
        deadline = time.monotonic() + 30
        while "fork" not in seen and time.monotonic() < deadline:
            time.sleep(0.1)
        before = list(seen)
        seen.clear()
    else:
        before = []

    import numpy as np
    from atrous.config import get_cfg
    from atrous.deploy import export_openvino, quantize_model
    from atrous.deploy.runtime import load_exported_model
    from atrous.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(cfg_file)
    model = build_model(cfg).eval()
    export_openvino(model, os.path.join(out, "model.xml"))
    images = [np.random.default_rng(i).uniform(0, 255, (1, 3, 64, 128)).astype(np.float32)
              for i in range(2)]
    quantize_model(model, images, backend="openvino", output=os.path.join(out, "int8.xml"))
    load_exported_model(os.path.join(out, "int8.xml"))
    time.sleep(2)  # a sender started late would fork within this
    print(json.dumps({"before": before, "during": seen}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fresh", "preimported"])
def test_atrous_sends_no_openvino_telemetry(tiny_cfg, tmp_path, mode):
    home = tmp_path / "home"
    (home / "intel").mkdir(parents=True)
    (home / "intel" / "openvino_telemetry").write_text("1")
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(tiny_cfg.dump())
    script = tmp_path / "watch.py"
    script.write_text(_TELEMETRY_WATCH)
    # Not a CI job as far as the libraries can tell: they stay quiet in one on their own.
    quiet = ("CI", "TF_BUILD", "JENKINS_URL", "NNCF_CI", "NNCF_DEV")
    env = {k: v for k, v in os.environ.items() if k not in quiet}
    env.update(HOME=str(home), PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), mode, str(cfg_file), str(tmp_path)],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if mode == "preimported":
        # The program's own import reported (the watch sees a sender) ...
        assert "fork" in result["before"] and any(s.startswith("thread") for s in result["before"])
    else:
        assert result["before"] == []
    # ... atrous' export, quantization and loading report nothing.
    assert result["during"] == []


# A fresh interpreter with faulthandler on (it gives the main thread an alternate signal stack, as
# pytest does) loads the same IR twice through atrous, drops the two models in the order they were
# made, then lets a child process exit while a Python SIGCHLD handler is installed (torch's
# DataLoader leaves one behind). With one Core per model, the CPU plugins put the alternate stack
# back out of order, the SIGCHLD frame cannot be written to the unmapped stack and the kernel kills
# the process with SIGSEGV; with the process's one Core the stack stays mapped.
_SIGNAL_STACK_WATCH = textwrap.dedent(
    """
    import ctypes, faulthandler, gc, json, signal, subprocess, sys

    faulthandler.enable()
    libc = ctypes.CDLL(None)

    class Stack(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

    def alternate_stack_is_mapped():
        stack = Stack()
        libc.sigaltstack(None, ctypes.byref(stack))
        if stack.flags & 2:  # SS_DISABLE: no alternate stack, nothing can dangle
            return True
        for line in open("/proc/self/maps"):
            low, high = (int(x, 16) for x in line.split()[0].split("-"))
            if low <= stack.sp < high:
                return True
        return False

    from atrous.deploy.runtime import load_exported_model

    first = load_exported_model(sys.argv[1])
    second = load_exported_model(sys.argv[1])
    del first
    gc.collect()
    del second
    gc.collect()
    mapped = alternate_stack_is_mapped()
    signal.signal(signal.SIGCHLD, lambda *args: None)
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    print(json.dumps({"mapped": mapped}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads the alternate stack from /proc")
def test_dropped_openvino_models_leave_the_signal_stack_mapped(reference_model, tmp_path):
    xml = export_openvino(reference_model, tmp_path / "model.xml")
    script = tmp_path / "watch.py"
    script.write_text(_SIGNAL_STACK_WATCH)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(xml)], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"mapped": True}


def test_only_openvino_core_makes_a_core() -> None:
    # Every Core atrous (or a test) makes loads a CPU plugin of its own, whose alternate signal
    # stack is unmapped when the Core ends: Cores ending out of order crash the process on its
    # next signal. So the process's one Core (openvino_core) is the only one made.
    home = REPO / "src" / "atrous" / "deploy" / "openvino.py"
    for path in sorted([*(REPO / "src").rglob("*.py"), *(REPO / "tests").rglob("*.py")]):
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "Core"
            ):
                raise AssertionError(
                    f"{path.relative_to(REPO)}:{node.lineno} makes an OpenVINO Core: use "
                    "atrous.deploy.openvino.openvino_core()"
                )
