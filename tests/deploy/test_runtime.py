"""Exported graphs behind the segmentor's contract: parity, output sizes, wrappers, refusals."""

from __future__ import annotations

import re
import sys

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from atrous.config import ConfigError
from atrous.deploy.openvino import import_openvino
from atrous.deploy.runtime import (
    ExportedModelError,
    MissingRuntimeError,
    build_exported_model,
    load_exported_model,
)
from atrous.inference import SemanticSegmentorWithTTA, SlidingWindowInference
from atrous.modeling.segmentor import OutputTooLargeError
from tests.helpers import (
    V3PLUS_CONFIG,
    build_reference_model,
    load_config,
    reference_bundle_overrides,
)

# OpenVINO imported as atrous imports it, so that the test run reports no telemetry either.
ov = import_openvino()

BACKENDS = ["onnx", "openvino"]
# Float32 graphs in another runtime: sums in another order, nothing more.
TOLERANCE = 1e-3


@pytest.fixture
def cfg(reference_dir):
    """The config of `reference_exports` (the reference model predicting at the input size)."""
    return load_config(V3PLUS_CONFIG, reference_bundle_overrides(reference_dir))


@pytest.fixture
def model(cfg, reference_dir):
    return build_reference_model(cfg, reference_dir)


def _image(size, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator)


def _assert_close(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g["sem_seg"].dtype == torch.float32 and g["sem_seg"].shape == e["sem_seg"].shape
        assert float((g["sem_seg"] - e["sem_seg"]).abs().max()) <= TOLERANCE


@pytest.mark.parametrize("backend", BACKENDS)
def test_exported_graph_answers_like_the_segmentor(cfg, model, reference_exports, backend):
    exported = build_exported_model(cfg, reference_exports[backend])
    assert exported.num_classes == 19 and exported.precision == "fp32"
    assert exported.runtime.startswith({"onnx": "onnxruntime ", "openvino": "openvino "}[backend])
    # Output sizes other than the image's (up and down, another aspect ratio), and a batch of
    # two sizes: padded as the segmentor pads (with the pixel mean, i.e. zero once normalised).
    inputs = [
        {"image": _image((40, 56), 1), "height": 57, "width": 91},
        {"image": _image((48, 72), 2), "height": 30, "width": 30},
        {"image": _image((48, 72), 3).float()},  # float images, output at the image size
    ]
    with torch.no_grad():
        expected = model(inputs)
    got = exported(inputs)
    assert [tuple(g["sem_seg"].shape) for g in got] == [(19, 57, 91), (19, 30, 30), (19, 48, 72)]
    _assert_close(got, expected)
    # Without the pixel mean, images of different sizes run one at a time, each like a
    # single-image call of the segmentor.
    alone = load_exported_model(reference_exports[backend])
    with torch.no_grad():
        singles = [model([x])[0] for x in inputs]
    _assert_close(alone(inputs), singles)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_wrappers_and_modes_treat_it_as_a_model(cfg, model, reference_exports, backend):
    exported = build_exported_model(cfg, reference_exports[backend])
    assert exported.eval() is exported and not exported.training
    assert exported.device == torch.device("cpu") and list(exported.parameters()) == []
    with pytest.raises(RuntimeError, match="runs inference only"):
        exported.train()
    inputs = [{"image": _image((48, 80), 4), "height": 60, "width": 100}]
    for wrap in (
        lambda m: SemanticSegmentorWithTTA(m, min_sizes=(40, 48), max_size=200, flip=True),
        lambda m: SlidingWindowInference(m, window=(32, 48), stride=(16, 32)),
    ):
        with torch.no_grad():
            expected = wrap(model).eval()(inputs)
        _assert_close(wrap(exported).eval()(inputs), expected)


@pytest.mark.slow
def test_openvino_precision_hint_and_float16_weights(
    cfg, model, reference_exports, tmp_path, caplog
):
    inputs = [{"image": _image((40, 56), 5)}]
    bf16 = build_exported_model(cfg, reference_exports["openvino"], precision="bf16")
    assert bf16.precision == "bf16"
    with torch.no_grad():
        expected = model(inputs)[0]["sem_seg"]
    got = bf16(inputs)[0]["sem_seg"]
    # Really bf16 (8 mantissa bits): not float32's result, but the same picture mostly.
    assert float((got - expected).abs().max()) > TOLERANCE
    assert (got.argmax(0) == expected.argmax(0)).float().mean() > 0.9
    with pytest.raises(ValueError, match="OpenVINO"):
        load_exported_model(reference_exports["onnx"], precision="bf16")
    # openvino.save_model's default stores float16 weights: said, since results then differ.
    half = tmp_path / "half.xml"
    ov.save_model(ov.convert_model(str(reference_exports["onnx"])), str(half))
    load_exported_model(half)
    assert "stores its weights in float16" in caplog.text


def test_config_must_describe_the_graph(cfg, reference_exports):
    path = reference_exports["onnx"]
    for key, value, message in [
        ("TEST.FAST.ENABLED", "True", "TEST.FAST.ENABLED rewrites the PyTorch model"),
        ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "8", "predicts 19 classes but .*NUM_CLASSES is 8"),
        ("MODEL.DEVICE", "cuda", "exported graphs run on the CPU"),
    ]:
        changed = cfg.clone()
        changed.merge_from_list([key, value])
        with pytest.raises(ConfigError, match=message):
            build_exported_model(changed, path)


def test_output_budget_is_checked_before_running(cfg, reference_exports):
    cfg.TEST.MAX_OUTPUT_MB = 1
    exported = build_exported_model(cfg, reference_exports["onnx"])
    with pytest.raises(OutputTooLargeError, match=r"big\.png.*TEST\.MAX_OUTPUT_MB"):
        exported([{"image": _image((40, 56), 6), "height": 200, "width": 200,
                   "file_name": "big.png"}])  # fmt: skip


def _onnx_graph(path, inputs, outputs):
    """A one-node-per-output ONNX file with the given (name, element type, shape) tensors."""
    nodes = [helper.make_node("Identity", [inputs[0][0]], [name]) for name, _, _ in outputs]
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info(*spec) for spec in inputs],
        [helper.make_tensor_value_info(*spec) for spec in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def test_files_that_are_not_atrous_graphs_are_refused(tmp_path):
    foreign = _onnx_graph(
        tmp_path / "foreign.onnx",
        [("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    end_to_end = _onnx_graph(
        tmp_path / "e2e.onnx",
        [("image", TensorProto.UINT8, ["n", "h", "w", 3])],
        [("labels", TensorProto.UINT8, ["n", "h", "w", 3]),
         ("confidence", TensorProto.UINT8, ["n", "h", "w", 3])],
    )  # fmt: skip
    ov.save_model(ov.convert_model(str(foreign)), str(tmp_path / "foreign.xml"))
    ov.save_model(ov.convert_model(str(end_to_end)), str(tmp_path / "e2e.xml"))
    for suffix in (".onnx", ".xml"):
        with pytest.raises(ExportedModelError, match=r"not a graph atrous exported.*\['x'\]"):
            load_exported_model((tmp_path / "foreign").with_suffix(suffix))
        with pytest.raises(ExportedModelError, match=r"end-to-end graph.*without --end-to-end"):
            load_exported_model((tmp_path / "e2e").with_suffix(suffix))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a graph" * 10)
    with pytest.raises(ExportedModelError, match=r"garbage\.onnx cannot be read by ONNX Runtime"):
        load_exported_model(garbage)
    (tmp_path / "foreign.bin").unlink()
    with pytest.raises(ExportedModelError, match=r"foreign.bin is missing"):
        load_exported_model(tmp_path / "foreign.xml")
    with pytest.raises(ExportedModelError, match="does not exist"):
        load_exported_model(tmp_path / "nothing.onnx")
    with pytest.raises(ExportedModelError, match="not an exported graph"):
        load_exported_model(tmp_path / "model.pt")


@pytest.mark.parametrize(
    ("backend", "module", "extra"),
    [("onnx", "onnxruntime", "atrous[export]"), ("openvino", "openvino", "atrous[openvino]")],
)
def test_a_missing_runtime_names_its_extra(reference_exports, monkeypatch, backend, module, extra):
    # A None entry makes `import module` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, module, None)
    message = rf"needs {module}, which is not installed: pip install '{re.escape(extra)}'"
    with pytest.raises(MissingRuntimeError, match=message):
        load_exported_model(reference_exports[backend])
