"""The end-to-end graph (uint8 RGB image -> labels, confidence) against `Predictor`.

The reference model with its detectron2 weights, predicting at the input size
(INPUT.MIN_SIZE_TEST 0, as the graph does), once as configured (INPUT.FORMAT RGB) and once with
INPUT.FORMAT BGR: the same weights then see the channels swapped, so only a graph that swaps
them as `Predictor` does can agree with it on both.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from atrous.deploy.export import (
    END_TO_END_GRAPH,
    TORCHSCRIPT_METADATA,
    export_onnx,
    export_torchscript,
    label_metadata,
)
from atrous.inference import Predictor
from tests.helpers import (
    FIXTURE_REFERENCE_DIR,
    REPO_ROOT,
    V3PLUS_CONFIG,
    load_config,
    reference_bundle_overrides,
)

# A pixel whose two best PyTorch logits are closer than this is a tie that another runtime's
# float32 rounding may break either way. The runtimes' logits differ by far less (the labels
# measured here differ only where the gap is below 4e-5; the logits graph is held to 1e-3 in
# tests/deploy/test_export.py); the reference network's 19 near-uniform classes make such pixels
# 0.2-0.3% of the picture at this bound, and more than 0.5% fails.
NEAR_TIE = 1e-3


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The reference picture at another (H, W): a natural input, not noise."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """The reference input (128x256, multiples of the stride 16) and a 150x230 one (neither)."""
    image = np.load(FIXTURE_REFERENCE_DIR / "input_128x256.npy")
    return [image, _resized(image, (150, 230))]


def _predictor(input_format: str) -> Predictor:
    cfg = load_config(V3PLUS_CONFIG, reference_bundle_overrides(FIXTURE_REFERENCE_DIR))
    cfg.merge_from_list(["INPUT.FORMAT", input_format])
    return Predictor(cfg)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """``export("RGB" | "BGR") -> (predictor, end-to-end ONNX file)``, each made once."""
    made: dict[str, tuple[Predictor, Path]] = {}

    def get(input_format: str) -> tuple[Predictor, Path]:
        if input_format not in made:
            predictor = _predictor(input_format)
            path = tmp_path_factory.mktemp("e2e") / f"model_{input_format}.onnx"
            export_onnx(
                predictor.model,
                path,
                end_to_end=True,
                input_format=input_format,
                metadata=label_metadata(["a"] * 18 + ["b"], [(1, 2, 3)] * 19),
            )
            made[input_format] = (predictor, path)
        return made[input_format]

    return get


@pytest.fixture(params=["RGB", "BGR"])
def exported(request, export) -> tuple[Predictor, Path]:
    return export(request.param)


@pytest.fixture
def rgb_exported(export) -> tuple[Predictor, Path]:
    return export("RGB")


def _check_against_predictor(predictor: Predictor, image: np.ndarray, labels, confidence):
    """Labels identical except on near-ties (rare), confidence within 1e-3."""
    expected = predictor(image, return_probabilities=True)
    assert labels.shape == confidence.shape == image.shape[:2]
    assert labels.dtype == np.int64 and confidence.dtype == np.float32
    probs = expected.probabilities
    assert np.abs(confidence - probs.max(0)).max() <= 1e-3
    # The top-2 logit gap of PyTorch is the log-ratio of its two largest probabilities.
    top2 = np.log(np.sort(probs, axis=0)[-2:])
    tie = (top2[1] - top2[0]) < NEAR_TIE
    assert tie.mean() <= 0.005, tie.mean()
    assert np.array_equal(labels[~tie], expected.labels[~tie])


@pytest.mark.slow  # an export traces the model (~20 s)
def test_onnx_graph_matches_predictor_at_two_sizes_and_in_a_batch(exported, images):
    predictor, path = exported
    graph = onnx.load(str(path))
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["atrous_graph"] == END_TO_END_GRAPH
    assert props["atrous_model_input_format"] == predictor.cfg.INPUT.FORMAT
    assert json.loads(props["atrous_classes"]) == ["a"] * 18 + ["b"]
    assert json.loads(props["atrous_colors"]) == [[1, 2, 3]] * 19
    (inp,) = graph.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:3]] == ["batch", "height", "width"] and dims[
        3
    ].dim_value == 3
    assert [o.name for o in graph.graph.output] == ["labels", "confidence"]
    for output in graph.graph.output:  # at the input size, and the graph says so
        dims = output.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "height", "width"]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for image in images:
        labels, confidence = session.run(None, {"image": image[None]})
        _check_against_predictor(predictor, image, labels[0], confidence[0])
    # Dynamic batch: two images of one size in one run give each image's own result.
    pair = np.stack([images[1], images[1][:, ::-1]])
    labels, confidence = session.run(None, {"image": pair})
    for i in range(2):
        _check_against_predictor(predictor, pair[i], labels[i], confidence[i])


def test_the_channel_swap_matters_for_the_bgr_model(images):
    # Otherwise the BGR parity above could not tell a missing swap from a correct one.
    rgb, bgr = _predictor("RGB"), _predictor("BGR")
    differ = (rgb(images[0]).labels != bgr(images[0]).labels).mean()
    assert differ > 0.05, differ


@pytest.mark.slow  # an export traces the model (~20 s)
def test_openvino_end_to_end_ir_matches_predictor(tmp_path, images):
    from atrous.deploy.openvino import export_openvino, openvino_core, read_openvino_metadata

    predictor = _predictor("RGB")
    path = export_openvino(
        predictor.model,
        tmp_path / "model.xml",
        end_to_end=True,
        input_format="RGB",
        metadata=label_metadata(["a"] * 18 + ["b"], [(1, 2, 3)] * 19),
    )
    # The ONNX converter drops metadata_props; the IR must still say what kind of graph it is.
    props = read_openvino_metadata(path)
    assert props["atrous_graph"] == END_TO_END_GRAPH
    assert json.loads(props["atrous_classes"]) == ["a"] * 18 + ["b"]
    compiled = openvino_core().compile_model(
        str(path),
        "CPU",
        # float32 as in the parity bound: the CPU plugin may default to bf16 on bf16 hardware
        {"INFERENCE_PRECISION_HINT": "f32"},
    )
    for image in images:
        result = compiled({"image": image[None]})
        labels = result[compiled.output("labels")][0]
        confidence = result[compiled.output("confidence")][0]
        _check_against_predictor(predictor, image, labels.astype(np.int64), confidence)


@pytest.mark.slow  # an export traces the model (~20 s)
def test_torchscript_end_to_end_matches_predictor(tmp_path, images):
    predictor = _predictor("BGR")
    path = export_torchscript(
        predictor.model, tmp_path / "model.pt", end_to_end=True, input_format="BGR"
    )
    extra_files = {TORCHSCRIPT_METADATA: ""}
    scripted = torch.jit.load(str(path), _extra_files=extra_files)
    assert json.loads(extra_files[TORCHSCRIPT_METADATA])["atrous_graph"] == END_TO_END_GRAPH
    for image in images:
        with torch.no_grad():
            labels, confidence = scripted(torch.from_numpy(image)[None])
        _check_against_predictor(predictor, image, labels[0].numpy(), confidence[0].numpy())


def test_end_to_end_export_needs_the_input_format(tmp_path):
    predictor = _predictor("RGB")
    with pytest.raises(ValueError, match=r"INPUT\.FORMAT"):
        export_onnx(predictor.model, tmp_path / "m.onnx", end_to_end=True)
    with pytest.raises(ValueError, match="'RGB' or 'BGR'"):
        export_onnx(predictor.model, tmp_path / "m.onnx", end_to_end=True, input_format="rgb")
    assert not list(tmp_path.iterdir())


def _readme_deploy_script() -> str:
    """The Python block of the README's "Deploy one file" section."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = re.search(r"^### Deploy one file\n(.*?)(?=^#)", readme, re.S | re.M)
    assert section is not None, "README.md has no '### Deploy one file' section"
    block = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert block is not None
    return block.group(1)


# Runs a script with atrous and torch made unimportable: it may use only what a deployment has.
_WITHOUT_ATROUS = (
    "import runpy, sys\n"
    "sys.modules['atrous'] = sys.modules['torch'] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


@pytest.mark.slow  # an export traces the model (~20 s)
def test_readme_script_runs_without_atrous(rgb_exported, images, tmp_path):
    script = _readme_deploy_script()
    assert len([line for line in script.splitlines() if line.strip()]) <= 10
    predictor, model_path = rgb_exported
    (tmp_path / "segment.py").write_text(script)
    Image.fromarray(images[1]).save(tmp_path / "street.png")
    env = {"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", _WITHOUT_ATROUS, "segment.py", str(model_path),
         "street.png", "labels.png"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    saved = np.asarray(Image.open(tmp_path / "labels.png"))
    expected = predictor(images[1], return_probabilities=True)
    _check_against_predictor(
        predictor, images[1], saved.astype(np.int64), expected.probabilities.max(0)
    )
    mean = float(re.search(r"mean confidence ([0-9.]+)", result.stdout).group(1))
    assert abs(mean - expected.probabilities.max(0).mean()) < 1e-3
