"""`atrous quantize` end to end: the folder it writes, its errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from atrous.cli.main import main
from tests.helpers import V3PLUS_CONFIG, reference_bundle_overrides, run_cli_without

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def datasets(synthetic_cityscapes_root, monkeypatch):
    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent))
    return synthetic_cityscapes_root


def _args(reference_dir, output, *extra):
    return ["quantize", "--config-file", str(V3PLUS_CONFIG), "--output", str(output),
            "--calib-dataset", "synthetic_sem_seg_train", *extra,
            *reference_bundle_overrides(reference_dir)]  # fmt: skip


@pytest.mark.slow
def test_quantize_writes_a_folder_that_says_what_it_is(datasets, reference_dir, tmp_path, capsys):
    output = tmp_path / "int8"
    args = _args(reference_dir, output, "--backend", "onnxruntime", "--calib-images", "3")
    assert main(args) == 0
    assert "wrote INT8 onnxruntime model folder" in capsys.readouterr().out
    assert sorted(p.name for p in output.iterdir()) == [
        "config.yaml", "model_int8.onnx", "quantization.json"
    ]  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["int8"]  # nothing staged is left behind
    info = json.loads((output / "quantization.json").read_text())
    assert info["backend"] == "onnxruntime" and info["model_file"] == "model_int8.onnx"
    assert info["calibration"]["dataset"] == "synthetic_sem_seg_train"
    assert info["calibration"]["images"] == len(info["calibration"]["files"]) == 3
    assert info["kept_in_float32"]["modules"] == ["sem_seg_head.predictor"]
    assert {"atrous_version", "torch_version", "onnxruntime_version"} <= info["versions"].keys()
    assert "MODEL:" in (output / "config.yaml").read_text()

    session = ort.InferenceSession(
        str(output / "model_int8.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(None, {"images": np.zeros((1, 3, 64, 96), np.float32)})
    assert logits.shape == (1, 19, 64, 96)

    # Running again replaces its own folder; a folder holding anything else is refused.
    assert main(args) == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code = main(_args(reference_dir, foreign, "--backend", "onnxruntime", "--calib-images", "1"))
    assert code == 1
    assert "refusing to replace it" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_calibration_image_count_must_be_positive(reference_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(_args(reference_dir, tmp_path / "out", "--calib-images", "0"))
    assert stop.value.code == 2
    assert "--calib-images must be a whole number >= 1, got '0'" in capsys.readouterr().err


@pytest.mark.slow
def test_an_unreadable_calibration_image_is_named(
    synthetic_cityscapes_root, reference_bundle, tmp_path, monkeypatch, capsys
):
    import shutil

    root = tmp_path / "datasets" / "synthetic"
    shutil.copytree(synthetic_cityscapes_root, root)
    monkeypatch.setenv("ATROUS_DATASETS", str(root.parent))
    broken = sorted((root / "leftImg8bit" / "train").rglob("*.png"))[0]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # the header survives, the pixels do not
    # From a model bundle this time: its config's DATASETS.TRAIN is Cityscapes, hence the flag.
    code = main(["quantize", "--model", str(reference_bundle), "--output", str(tmp_path / "out"),
                 "--backend", "onnxruntime",
                 "--calib-dataset", "synthetic_sem_seg_train"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read calibration image" in err[0] and broken.name in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("backend", "missing", "extra"),
    [("openvino", "nncf", "atrous[openvino]"), ("onnxruntime", "onnxruntime", "atrous[export]")],
)
def test_a_missing_runtime_names_the_extra(tmp_path, backend, missing, extra):
    # A process in which the package cannot be imported, as on an install without the extra.
    args = ["quantize", "--config-file", str(V3PLUS_CONFIG), "--output", str(tmp_path / "out"),
            "--backend", backend]  # fmt: skip
    proc = run_cli_without(missing, args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install '{extra}'" in lines[0] and repr(missing) in lines[0]
    assert list(tmp_path.iterdir()) == []
