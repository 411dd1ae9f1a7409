"""INT8 post-training quantization: agreement with float32, the graphs' structure, calibration."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

import atrous
from atrous.data.errors import DatasetError
from atrous.deploy.openvino import import_openvino, openvino_core, read_openvino_metadata
from atrous.deploy.quantize import (
    CalibrationImages,
    float_module_names,
    onnx_nodes_of_modules,
    quantize_model,
)
from tests.helpers import SMALL_REFERENCE_OVERRIDES, V3PLUS_CONFIG, load_config

# OpenVINO imported as atrous imports it, so that the test run reports no telemetry either.
ov = import_openvino()

# Predicting at the stored 64x128 size.
OVERRIDES = [*SMALL_REFERENCE_OVERRIDES, "INPUT.MIN_SIZE_TEST", "0"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """$ATROUS_DATASETS with a 4 + 2 image synthetic dataset of 64x128 street scenes."""
    from atrous.data.datasets.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("datasets")
    generate_dataset(root / "synthetic", num_train=4, num_val=2, size=(64, 128), seed=0)
    return root


@pytest.fixture(scope="module")
def trained(datasets):
    """The reference-width V3+ trained (overfitted) on the 4 training scenes, in eval mode.

    INT8 agreement is only meaningful on a trained network: the random reference weights make
    the logits a chaotic function of the input (quantizing them flips half the argmax), while
    training makes the classes' margins large against rounding, as in a real model. 150 Adam
    steps on 4 images of 64x128 take a few seconds.
    """
    from atrous.data import get_dataset_records
    from atrous.data.mapper import DatasetMapper
    from atrous.modeling import build_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATROUS_DATASETS", str(datasets))
        cfg = load_config(V3PLUS_CONFIG, OVERRIDES)
        mapper = DatasetMapper(augmentations=[], image_format="RGB", num_classes=19)
        samples = [mapper(r) for r in get_dataset_records("synthetic_sem_seg_train")]
    torch.manual_seed(0)
    model = build_model(cfg).train()
    images = torch.stack([s["image"] for s in samples]).float()
    labels = torch.stack([s["sem_seg"] for s in samples])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model.logits((images - model.pixel_mean) / model.pixel_std)
        loss = F.cross_entropy(logits, labels, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return cfg, model.eval()


def _agreements(model, run, images) -> list[float]:
    result = []
    for image in images:
        with torch.no_grad():
            expected = model([{"image": torch.from_numpy(image[0])}])[0]["sem_seg"].numpy()
        got = run(image)[0]
        assert got.shape == expected.shape
        result.append(float((got.argmax(0) == expected.argmax(0)).mean()))
    return result


def _check_agreement(agreements: list[float]) -> None:
    # On the trained quickstart model (synthetic-val, 50 images of 192x384) both backends agree
    # with float32 on 99.7-99.8% of the pixels (docs/benchmarks.md). These 64x128 scenes are
    # mostly object boundaries and the network is barely trained, so its margins are smaller:
    # measured 96.3-98.6% per image (mean 97.6%) for OpenVINO and 97.4-99.3% (mean 98.7%) for
    # ONNX Runtime. A quantization that is wrong anywhere (a bad scale, a layer fed the wrong
    # range) lands far below: the random reference weights, as chaotic as a wrong scale, agree
    # on 40-55%.
    assert min(agreements) >= 0.95, agreements
    assert np.mean(agreements) >= 0.965, agreements


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_int8_model_agrees_with_float32(trained, datasets, tmp_path, monkeypatch, backend):
    monkeypatch.setenv("ATROUS_DATASETS", str(datasets))
    cfg, model = trained
    calibration = CalibrationImages(cfg, "synthetic_sem_seg_train", 4)
    assert len(calibration) == 4
    suffix = ".xml" if backend == "openvino" else ".onnx"
    result = quantize_model(
        model, calibration, backend=backend, output=tmp_path / f"model_int8{suffix}"
    )
    assert result.calibration_images == 4
    assert result.float_modules == ["sem_seg_head.predictor"] and len(result.float_nodes) == 1
    (predictor,) = result.float_nodes
    stamp = {"atrous_version": atrous.__version__, "quantization": f"int8 {backend}"}

    if backend == "openvino":
        ir = openvino_core().read_model(str(result.path))
        assert stamp.items() <= read_openvino_metadata(result.path).items()
        convs = [op for op in ir.get_ops() if op.get_type_name() == "Convolution"]
        # Every convolution but the predictor reads int8 weights and quantized activations.
        float_convs = {op.get_friendly_name() for op in convs if not _is_int8_convolution(op)}
        assert {name.split("/")[0] for name in float_convs} == {predictor}
        compiled = openvino_core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

        def run(x):
            return compiled(x)[0]
    else:
        graph = onnx.load(str(result.path))
        assert stamp.items() <= {p.key: p.value for p in graph.metadata_props}.items()
        producers = {out: node for node in graph.graph.node for out in node.output}
        convs = [n for n in graph.graph.node if n.op_type == "Conv"]
        float_convs = {
            n.name
            for n in convs
            if not all(
                producers.get(n.input[i]) is not None
                and producers[n.input[i]].op_type == "DequantizeLinear"
                for i in range(2)
            )
        }
        assert float_convs == {predictor}
        session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])

        def run(x):
            return session.run(None, {"images": x})[0]

    val = CalibrationImages(cfg, "synthetic_sem_seg_val", 2)
    _check_agreement(_agreements(model, run, [*val, *calibration]))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model_int8.xml", "model_int8.bin"] if backend == "openvino" else ["model_int8.onnx"]
    )


def _weights_source(node):
    # Saved int8 weights are an i8 constant -> Convert -> (Subtract zero point) -> Multiply by the
    # scale -> Convolution: walk back over the dequantization steps.
    while node.get_type_name() in ("Convert", "Multiply", "Subtract", "Reshape"):
        node = node.input_value(0).get_node()
    return node


def _quantized_activations(node) -> bool:
    # A FakeQuantize, or ops that keep int8 values int8 (max pooling, concatenation) over them.
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind in ("MaxPool", "Concat", "Reshape"):
        inputs = range(node.get_input_size() if kind == "Concat" else 1)
        return all(_quantized_activations(node.input_value(i).get_node()) for i in inputs)
    return False


def _is_int8_convolution(op) -> bool:
    weights = _weights_source(op.input_value(1).get_node())
    int8_weights = weights.get_type_name() == "FakeQuantize" or (
        weights.get_type_name() == "Constant" and weights.get_element_type() == ov.Type.i8
    )
    return _quantized_activations(op.input_value(0).get_node()) and int8_weights


@pytest.mark.slow
def test_float_modules_and_their_graph_nodes(reference_model, tmp_path):
    from atrous.deploy.export import export_onnx

    names = float_module_names(reference_model, ("predictor", "image_pooling"))
    assert names == ["sem_seg_head.predictor", "sem_seg_head.decoder.res5.project_conv.convs.4"]
    graph = onnx.load(str(export_onnx(reference_model, tmp_path / "m.onnx", sample_size=(64, 64))))
    nodes = {n.name: n.op_type for n in graph.graph.node}
    predictor = onnx_nodes_of_modules(graph, names[:1])
    assert [nodes[n] for n in predictor] == ["Conv"]
    pooling = {nodes[n] for n in onnx_nodes_of_modules(graph, names[1:])}
    assert {"ReduceMean", "Conv", "Relu"} <= pooling or {"AveragePool", "Conv", "Relu"} <= pooling
    with pytest.raises(ValueError, match="no node of the exported graph comes from"):
        onnx_nodes_of_modules(graph, ["sem_seg_head.nothing"])
    with pytest.raises(ValueError, match="must be among predictor, image_pooling"):
        float_module_names(reference_model, ("backbone",))


def _yaml_dataset(folder, pairs: list[tuple[str, str]]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "list.txt").write_text("".join(f"{i} {m}\n" for i, m in pairs))
    (folder / "d.yaml").write_text(
        "classes: [a, b]\nignore_value: 255\nsplits:\n  train: {list: list.txt}\n"
    )
    return f"{folder / 'd.yaml'}:train"


def _two_class_cfg():
    return load_config(V3PLUS_CONFIG, [*OVERRIDES, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2"])


def test_calibration_errors_are_clear(tmp_path):
    cfg = _two_class_cfg()
    rng = np.random.default_rng(0)
    for name in ("good", "bad"):
        pixels = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        Image.fromarray(np.zeros((64, 128), np.uint8)).save(tmp_path / f"{name}_mask.png")
    data = (tmp_path / "bad.png").read_bytes()
    (tmp_path / "bad.png").write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    name = _yaml_dataset(tmp_path, [("good.png", "good_mask.png"), ("bad.png", "bad_mask.png")])

    with pytest.raises(ValueError, match="at least 1, got 0"):
        CalibrationImages(cfg, name, 0)
    calibration = CalibrationImages(cfg, name, 5)  # fewer images than asked: all of them
    assert [p.rsplit("/", 1)[-1] for p in calibration.files] == ["good.png", "bad.png"]
    with pytest.raises(DatasetError, match=r"cannot read calibration image .*bad\.png"):
        list(calibration)
    # The graph of a model trained with crops has a minimum input size; smaller images are
    # named before any quantizer sees them.
    small = CalibrationImages(cfg, name, 1, min_size=(128, 256))
    with pytest.raises(DatasetError, match=r"good\.png is 64x128 .* smaller than the 128x256"):
        list(small)

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "list.txt").write_text("")
    (tmp_path / "empty" / "d.yaml").write_text(
        "classes: [a, b]\nignore_value: 255\nsplits:\n  train: {list: list.txt}\n"
    )
    with pytest.raises(DatasetError, match="names no images"):
        CalibrationImages(cfg, f"{tmp_path / 'empty' / 'd.yaml'}:train", 4)


def test_an_empty_calibration_set_is_refused(reference_model, tmp_path):
    for backend, suffix in (("openvino", ".xml"), ("onnxruntime", ".onnx")):
        with pytest.raises(ValueError, match="calibration set is empty"):
            quantize_model(reference_model, [], backend=backend, output=tmp_path / f"m{suffix}")
    assert list(tmp_path.iterdir()) == []
