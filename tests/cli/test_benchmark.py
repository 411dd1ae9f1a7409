"""`atrous benchmark` on the small model: printed and JSON figures, FLOPs, train and ONNX modes."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from atrous.cli.main import main
from atrous.modeling import build_model
from tests.helpers import SMALL_REFERENCE_OVERRIDES, V3PLUS_CONFIG, load_config

HEAD = ["benchmark", "--config-file", str(V3PLUS_CONFIG), "--size", "64x128", "--warmup", "1"]


def _run(tmp_path, *args):
    out = tmp_path / "result.json"
    assert main([*HEAD, *args, "--json", str(out), *SMALL_REFERENCE_OVERRIDES]) == 0
    return json.loads(out.read_text())


def _eager_forward_flops(batch: int) -> int:
    """FLOPs of a real float32 forward, counted independently of the command's meta-device copy."""
    model = build_model(load_config(V3PLUS_CONFIG, SMALL_REFERENCE_OVERRIDES)).eval()
    inputs = [{"image": torch.zeros(3, 64, 128, dtype=torch.uint8)} for _ in range(batch)]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(inputs)
    return counter.get_total_flops()


def test_inference_fast_path(tmp_path, capsys):
    result = _run(tmp_path, "--iters", "3", "--dtype", "bf16", "--channels-last", "--fold-bn")
    printed = capsys.readouterr().out
    for label in ("images/s:", "latency p50:", "p90:", "peak memory:", "parameters:", "FLOPs"):
        assert label in printed
    assert result["mode"] == "infer" and result["size"] == [64, 128]
    assert result["dtype"] == "bf16" and result["channels_last"] and result["fold_bn"]
    assert len(result["latencies_s"]) == 3 and all(t > 0 for t in result["latencies_s"])
    assert result["latency_p50_ms"] <= result["latency_p90_ms"]
    assert result["images_per_s"] == pytest.approx(1e3 / result["latency_mean_ms"])
    assert result["peak_memory_kind"] == "peak_rss" and result["peak_memory_bytes"] > 50 * 2**20
    model = build_model(load_config(V3PLUS_CONFIG, SMALL_REFERENCE_OVERRIDES))
    assert result["parameters"] == sum(p.numel() for p in model.parameters())
    assert result["flops_per_iter"] == _eager_forward_flops(batch=1)
    assert result["threads"] == torch.get_num_threads() and result["hardware"]


def test_training_step_counts_forward_and_backward(tmp_path):
    result = _run(tmp_path, "--mode", "train", "--batch", "2", "--iters", "1")
    assert result["mode"] == "train" and result["batch"] == 2
    forward = _eager_forward_flops(batch=2)
    # Backward costs about twice the forward (input and weight gradients of every conv).
    assert 2.5 * forward < result["flops_per_iter"] < 3.5 * forward
    assert result["images_per_s"] > 0


def test_training_step_with_class_weights_named_by_a_method(tmp_path):
    # The method's weights come from training labels, which a benchmark does not read.
    out = tmp_path / "train.json"
    overrides = [*SMALL_REFERENCE_OVERRIDES, "MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS", "median_frequency"]
    args = ["--mode", "train", "--batch", "2", "--iters", "1", "--json", str(out)]
    assert main([*HEAD, *args, *overrides]) == 0
    assert json.loads(out.read_text())["images_per_s"] > 0


def test_onnxruntime_session(tmp_path):
    result = _run(tmp_path, "--onnx", "--iters", "2")
    assert result["runtime"].startswith("onnxruntime")
    assert result["flops_per_iter"] == _eager_forward_flops(batch=1)


def test_data_mode_runs_the_loader_benchmark(tmp_path, capsys):
    out = tmp_path / "data.json"
    code = main(
        ["benchmark", "--config-file", str(V3PLUS_CONFIG), "--mode", "data", "--size", "96x192",
         "--warmup", "0", "--iters", "2", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["mode"] == "data" and result["image_size"] == [96, 192]
    assert result["samples"] == 2 and result["fast_images_per_s"] > 0 and result["identical"]
    assert "images/s" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "512by1024"], "HxW"),
        (["--dtype", "int8"], "invalid choice"),
    ],
)
def test_bad_arguments_are_explained(args, message, capsys):
    with pytest.raises(SystemExit):
        main(["benchmark", "--config-file", str(V3PLUS_CONFIG), *args])
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only torch")
def test_cuda_without_a_gpu_is_explained(capsys):
    assert main(["benchmark", "--config-file", str(V3PLUS_CONFIG), "--device", "cuda"]) == 2
    assert re.search(
        r"--device: MODEL.DEVICE is .cuda. but .* sees no CUDA device", capsys.readouterr().err
    )


def test_missing_config_file_is_named(tmp_path, capsys):
    assert main(["benchmark", "--config-file", str(tmp_path / "nope.yaml")]) == 2
    assert re.search(r"nope\.yaml", capsys.readouterr().err)


def test_benchmark_a_bundle_times_its_config(tmp_path, reference_bundle, capsys):
    out = tmp_path / "result.json"
    code = main(["benchmark", "--model", str(reference_bundle), "--size", "64x128", "--warmup",
                 "1", "--iters", "1", "--json", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["config_file"] == str(reference_bundle)
    model = build_model(load_config(V3PLUS_CONFIG, SMALL_REFERENCE_OVERRIDES))
    assert result["parameters"] == sum(p.numel() for p in model.parameters())
    assert result["flops_per_iter"] == _eager_forward_flops(batch=1)
    assert main(["benchmark", "--size", "64x128"]) == 2
    assert "either --config-file or --model" in capsys.readouterr().err


def test_accuracy_mode_needs_a_dataset(tmp_path):
    with pytest.raises(SystemExit, match="--mode accuracy needs --dataset NAME"):
        main(["benchmark", "--mode", "accuracy", "--config-file", str(V3PLUS_CONFIG),
              *SMALL_REFERENCE_OVERRIDES, "DATASETS.TEST", "()"])  # fmt: skip
    with pytest.raises(SystemExit, match="add --mode accuracy"):
        main([*HEAD, "--dataset", "synthetic_sem_seg_val", *SMALL_REFERENCE_OVERRIDES])


@pytest.mark.slow
def test_openvino_backend_exports_and_sets_its_precision(tmp_path):
    result = _run(tmp_path, "--backend", "openvino", "--dtype", "bf16", "--iters", "1")
    assert result["backend"] == "openvino" and not result["int8"]
    assert result["runtime"].startswith("openvino ") and result["runtime"].endswith("(bf16)")
    assert result["dtype"] == "bf16" and not result["channels_last"]
    assert result["peak_memory_kind"] == "peak_rss" and result["peak_memory_bytes"] > 0
    assert result["flops_per_iter"] == _eager_forward_flops(batch=1)


@pytest.mark.slow
def test_an_exported_file_is_timed_with_its_own_runtime(tmp_path, reference_exports, capsys):
    out = tmp_path / "result.json"
    for name, runtime in (("openvino", "openvino "), ("onnx", "onnxruntime ")):
        code = main(["benchmark", "--model", str(reference_exports[name]), "--config-file",
                     str(V3PLUS_CONFIG), "--size", "64x128", "--warmup", "0", "--iters", "2",
                     "--batch", "2", "--json", str(out), *SMALL_REFERENCE_OVERRIDES])  # fmt: skip
        assert code == 0
        result = json.loads(out.read_text())
        assert result["backend"] == runtime.strip()
        assert result["runtime"].startswith(runtime) and result["runtime"].endswith("(fp32)")
        assert result["exported_file"] == str(reference_exports[name])
        assert len(result["latencies_s"]) == 2 and result["images_per_s"] > 0
        assert result["flops_per_iter"] == _eager_forward_flops(batch=2)
        assert f"backend={result['backend']}" in capsys.readouterr().out
    # The folder `atrous quantize` writes: its config.yaml describes the model.
    code = main(["benchmark", "--model", str(reference_exports["folder"]), "--size", "64x128",
                 "--warmup", "0", "--iters", "1", "--json", str(out)])  # fmt: skip
    assert code == 0 and json.loads(out.read_text())["backend"] == "openvino"


@pytest.mark.slow  # exports and quantizes the model
def test_int8_quantizes_the_exported_model_first(tmp_path):
    result = _run(tmp_path, "--backend", "openvino", "--int8", "--iters", "1")
    assert result["backend"] == "openvino" and result["int8"]
    assert result["latency_p50_ms"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--onnx", "--backend", "openvino"], "--onnx contradicts --backend openvino"),
        (["--backend", "openvino", "--mode", "train"], "times inference; use it with --mode infer"),
        (["--int8"], "add --backend openvino or onnxruntime"),
        (["--backend", "openvino", "--dtype", "fp16"], "use --dtype fp32|bf16"),
    ],
)
def test_backend_flags_that_cannot_work_are_refused(args, message, capsys):
    with pytest.raises(SystemExit):
        main([*HEAD, *args, *SMALL_REFERENCE_OVERRIDES])
    assert message in capsys.readouterr().err


def test_exported_file_flags_must_agree(reference_exports, capsys):
    onnx_file = str(reference_exports["onnx"])
    for args, message in [
        (["--model", onnx_file, "--backend", "openvino"], "runs with onnxruntime, not --backend"),
        (["--model", onnx_file, "--int8"], "drop --int8"),
        (["--model", onnx_file, "--mode", "accuracy"], "is an exported graph; this needs"),
    ]:
        # A contradiction among the flags raises SystemExit; a config error returns the code.
        try:
            code = main(["benchmark", "--config-file", str(V3PLUS_CONFIG), *args,
                         *SMALL_REFERENCE_OVERRIDES])  # fmt: skip
        except SystemExit as stop:
            code = stop.code
        assert code == 2
        assert message in capsys.readouterr().err
