"""`atrous evaluate` end to end on the generated dataset."""

from __future__ import annotations

import json

import pytest
import yaml

from atrous.cli.main import main
from tests.helpers import SMALL_REFERENCE_OVERRIDES, V3PLUS_CONFIG, reference_bundle_overrides


def test_evaluate_writes_metrics_and_report(
    tmp_path, reference_dir, synthetic_cityscapes_root, monkeypatch, capsys
):
    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent))
    out = tmp_path / "run"
    code = main(
        [
            "evaluate", "--config-file", str(V3PLUS_CONFIG), "--output", str(out), "--tta",
            *SMALL_REFERENCE_OVERRIDES,
            "MODEL.WEIGHTS", str(reference_dir / "small_v3plus.pkl"),
            "DATASETS.TEST", "('synthetic_sem_seg_val',)",
            "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TEST", "0",
            "TEST.AUG.MIN_SIZES", "(96, 128)", "TEST.AUG.MAX_SIZE", "512",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "synthetic_sem_seg_val" in printed and "mIoU" in printed and "iIoU" in printed
    results = json.loads((out / "inference" / "results.json").read_text())
    metrics = results["synthetic_sem_seg_val"]["sem_seg"]
    assert 0 <= metrics["IoU"] <= 100 and 0 <= metrics["mIoU"] <= 100
    assert (out / "inference" / "synthetic_sem_seg_val" / "report.html").is_file()


def test_evaluate_reports_a_missing_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATROUS_DATASETS", str(tmp_path / "nothing"))
    code = main(
        [
            "evaluate", "--config-file", str(V3PLUS_CONFIG), "--output", str(tmp_path / "o"),
            *SMALL_REFERENCE_OVERRIDES, "DATASETS.TEST", "('synthetic_sem_seg_val',)",
        ]
    )  # fmt: skip
    assert code == 1
    assert "synthetic" in capsys.readouterr().err


def test_evaluate_refuses_a_folder_in_use(
    tmp_path, synthetic_cityscapes_root, monkeypatch, capsys, lock_holder
):
    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent))
    out = tmp_path / "busy"
    holder = lock_holder(out)
    code = main(
        ["evaluate", "--config-file", str(V3PLUS_CONFIG), "--output", str(out),
         *SMALL_REFERENCE_OVERRIDES, "DATASETS.TEST", "('synthetic_sem_seg_val',)"]
    )  # fmt: skip
    assert code == 1  # a run-time refusal, as in `atrous train`
    assert f"in use by another atrous run: PID {holder.pid}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".atrous.lock"]  # nothing written


def test_evaluate_dataset_named_by_path_stays_in_output(
    tmp_path, reference_dir, synthetic_cityscapes_root, capsys
):
    data = tmp_path / "data"
    data.mkdir()
    images = sorted((synthetic_cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))[:2]
    lines = [
        f"{image} {str(image).replace('leftImg8bit', 'gtFine', 1)[: -len('leftImg8bit.png')]}"
        "gtFine_labelTrainIds.png"
        for image in images
    ]
    (data / "val.txt").write_text("\n".join(lines) + "\n")
    spec = {"classes": [f"c{i}" for i in range(19)], "ignore_value": 255,
            "splits": {"val": {"list": "val.txt"}}}  # fmt: skip
    (data / "d.yaml").write_text(yaml.safe_dump(spec))
    before = sorted(str(p) for p in data.rglob("*"))
    out = tmp_path / "out"
    code = main(
        ["evaluate", "--config-file", str(V3PLUS_CONFIG), "--output", str(out),
         "--dataset", f"{data / 'd.yaml'}:val", *SMALL_REFERENCE_OVERRIDES,
         "MODEL.WEIGHTS", str(reference_dir / "small_v3plus.pkl"),
         "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TEST", "0"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert sorted(str(p) for p in data.rglob("*")) == before
    assert len(list((out / "inference").glob("d.yaml_val-*/report.html"))) == 1
    assert f"{data / 'd.yaml'}:val" in json.loads((out / "inference" / "results.json").read_text())


def test_evaluate_a_bundle_gives_the_same_results(
    tmp_path, reference_dir, reference_bundle, synthetic_cityscapes_root, monkeypatch
):
    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent))
    data = ["DATALOADER.NUM_WORKERS", "0"]
    assert main(["evaluate", "--config-file", str(V3PLUS_CONFIG), "--output", str(tmp_path / "a"),
                 "--dataset", "synthetic_sem_seg_val",
                 *reference_bundle_overrides(reference_dir), *data]) == 0  # fmt: skip
    assert main(["evaluate", "--model", str(reference_bundle), "--output", str(tmp_path / "b"),
                 "--dataset", "synthetic_sem_seg_val", *data]) == 0  # fmt: skip
    expected = json.loads((tmp_path / "a" / "inference" / "results.json").read_text())
    got = json.loads((tmp_path / "b" / "inference" / "results.json").read_text())
    assert got == expected and got["synthetic_sem_seg_val"]["sem_seg"]["mIoU"] >= 0


def test_evaluate_refuses_a_bundle_with_weights_overrides(tmp_path, reference_bundle, capsys):
    code = main(["evaluate", "--model", str(reference_bundle), "--output", str(tmp_path),
                 "MODEL.WEIGHTS", "other.pth"])  # fmt: skip
    assert code == 2 and "brings its own weights" in capsys.readouterr().err


def _metrics(folder):
    return json.loads((folder / "inference" / "results.json").read_text())["synthetic_sem_seg_val"][
        "sem_seg"
    ]


def test_evaluate_exported_graphs_scores_like_pytorch(
    tmp_path, reference_dir, reference_exports, synthetic_cityscapes_root, monkeypatch
):
    # reference_exports hold the model of reference_bundle_overrides.
    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent))
    data = ["--dataset", "synthetic_sem_seg_val"]
    config = ["--config-file", str(V3PLUS_CONFIG)]
    opts = [*SMALL_REFERENCE_OVERRIDES, "INPUT.MIN_SIZE_TEST", "0", "DATALOADER.NUM_WORKERS", "0"]
    assert (
        main(
            [
                "evaluate",
                *config,
                "--output",
                str(tmp_path / "torch"),
                *data,
                *reference_bundle_overrides(reference_dir),
                "DATALOADER.NUM_WORKERS",
                "0",
            ]
        )
        == 0
    )
    expected = _metrics(tmp_path / "torch")
    runs = {
        "onnx": [*config, "--model", str(reference_exports["onnx"]), *data, *opts],
        "openvino": [*config, "--model", str(reference_exports["openvino"]), *data, *opts],
        # the folder `atrous quantize` writes: config.yaml beside the graph
        "folder": ["--model", str(reference_exports["folder"]), *data,
                   "DATALOADER.NUM_WORKERS", "0"],
    }  # fmt: skip
    for name, args in runs.items():
        assert main(["evaluate", "--output", str(tmp_path / name), *args]) == 0, name
        got = _metrics(tmp_path / name)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            # Float32 logits within 1e-4: at most a near-tie pixel changes its class. None is a
            # NaN (a class absent from predictions and labels) and must stay one.
            assert got[key] == (value if value is None else pytest.approx(value, abs=0.01)), key


def test_evaluate_explains_what_an_exported_graph_cannot_do(
    tmp_path, reference_exports, synthetic_cityscapes_root, monkeypatch, capsys
):
    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent))
    onnx_file = str(reference_exports["onnx"])
    config = ["--config-file", str(V3PLUS_CONFIG)]
    head = ["evaluate", "--output", str(tmp_path / "o"), "--dataset", "synthetic_sem_seg_val"]
    two = tmp_path / "two"
    two.mkdir()
    (two / "config.yaml").write_text("{}\n")
    (two / "a.onnx").write_bytes(b"")
    (two / "b.xml").write_bytes(b"")
    for args, message in [
        (["--model", onnx_file], "give the config of its model with --config-file"),
        ([*config, "--model", onnx_file, *SMALL_REFERENCE_OVERRIDES, "MODEL.WEIGHTS", "w.pth"],
         "carries its own weights"),
        ([*config, "--model", onnx_file, *SMALL_REFERENCE_OVERRIDES, "TEST.FAST.ENABLED", "True"],
         "cannot apply to the exported graph"),
        ([*config, "--model", onnx_file, "--precision", "bf16", *SMALL_REFERENCE_OVERRIDES],
         "applies to OpenVINO .xml models"),
        ([*config, "--precision", "bf16", *SMALL_REFERENCE_OVERRIDES], "TEST.FAST.DTYPE"),
        (["--model", str(two)], "holds several exported graphs"),
    ]:  # fmt: skip
        assert main([*head, *args]) == 2, message
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "inference").exists()


def test_evaluate_a_model_without_output_never_writes_where_its_config_points(
    tmp_path, reference_dir, synthetic_cityscapes_root, monkeypatch
):
    from atrous.checkpoint import Checkpointer
    from atrous.deploy.bundle_writer import write_bundle
    from atrous.modeling import build_model
    from tests.helpers import load_config

    # A bundle whose config.yaml names another folder: an unmodified bundle names the
    # exporter's training folder, a hostile one any folder.
    target = tmp_path / "exporters_training_run"
    (target / "inference").mkdir(parents=True)
    (target / "inference" / "results.json").write_text('{"theirs": 1}')
    cfg = load_config(V3PLUS_CONFIG, [*reference_bundle_overrides(reference_dir),
                                      "OUTPUT_DIR", str(target)])  # fmt: skip
    model = build_model(cfg)
    Checkpointer(model).load(cfg.MODEL.WEIGHTS, strict=True)
    bundle = write_bundle(tmp_path / "bundle", cfg=cfg, model=model)
    assert str(target) in (bundle / "config.yaml").read_text()

    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["evaluate", "--model", str(bundle), "--dataset", "synthetic_sem_seg_val",
                 "DATALOADER.NUM_WORKERS", "0"]) == 0  # fmt: skip
    assert (target / "inference" / "results.json").read_text() == '{"theirs": 1}'
    assert sorted(p.name for p in target.iterdir()) == ["inference"]
    assert (cwd / "output" / "evaluate" / "bundle" / "inference" / "results.json").is_file()
