"""`atrous predict` on generated images, including an unreadable one, and the benchmark export."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atrous.cli.main import main
from atrous.cli.predict import collect_inputs
from tests.helpers import SMALL_REFERENCE_OVERRIDES, V3PLUS_CONFIG

CITYSCAPES_LABEL_IDS = {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}


@pytest.fixture
def model_args(reference_dir):
    return [
        "--config-file",
        str(V3PLUS_CONFIG),
    ], [
        *SMALL_REFERENCE_OVERRIDES,
        "MODEL.WEIGHTS",
        str(reference_dir / "small_v3plus.pkl"),
        "INPUT.MIN_SIZE_TEST",
        "0",
    ]


def _images(folder: Path, names: list[str], size=(40, 56)) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image" * 10)
    return path


def test_predict_writes_pictures_and_skips_a_corrupt_file(tmp_path, model_args, capsys):
    src = tmp_path / "photos"
    good = _images(src, ["a.png", "b.png", "sub/c.jpg"])
    _corrupt(src / "broken.png")
    out = tmp_path / "out"
    head, opts = model_args
    code = main(["predict", *head, "--input", str(src), "--output", str(out), "--batch-size",
                 "2", "--opacity", "0.7", *opts])  # fmt: skip
    assert code == 1  # something failed ...
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 of 4 images failed" in err
    for name in ["a", "b", "sub/c"]:  # ... and everything else was processed
        with Image.open(out / f"{name}_labels.png") as labels:
            assert labels.mode == "P" and labels.size == (56, 40)
            values = np.asarray(labels)
            assert values.max() < 19
            palette = labels.getpalette()[:3]
        with Image.open(out / f"{name}_overlay.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == (56, 40)
        with Image.open(out / f"{name}_legend.png") as legend:
            assert legend.height >= 18 * len(np.unique(values))
    assert palette == [128, 64, 128]  # Cityscapes "road" colour from the dataset metadata
    assert not list(out.glob("broken*"))
    assert len(good) == 3


def test_predict_matches_the_predictor(tmp_path, model_args):
    from atrous.config import get_cfg
    from atrous.inference import Predictor

    (path,) = _images(tmp_path, ["x.png"])
    head, opts = model_args
    assert main(["predict", *head, "--input", str(path), "--output", str(tmp_path / "o"),
                 *opts]) == 0  # fmt: skip
    cfg = get_cfg()
    cfg.merge_from_file(str(V3PLUS_CONFIG))
    cfg.merge_from_list(opts)
    expected = Predictor(cfg)(np.asarray(Image.open(path).convert("RGB"))).labels
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o" / "x_labels.png")), expected)


def test_predict_confidence_writes_16_bit_maps_and_a_heat_map(tmp_path, model_args):
    from atrous.config import get_cfg
    from atrous.inference import Predictor
    from atrous.inference.confidence import read_png16

    (path,) = _images(tmp_path, ["x.png"])
    head, opts = model_args
    out = tmp_path / "o"
    assert main(["predict", *head, "--input", str(path), "--output", str(out), "--confidence",
                 "--min-confidence", "0.5", *opts]) == 0  # fmt: skip
    cfg = get_cfg()
    cfg.merge_from_file(str(V3PLUS_CONFIG))
    cfg.merge_from_list(opts)
    image = np.asarray(Image.open(path).convert("RGB"))
    expected = Predictor(cfg)(image, return_confidence=True).confidence
    for kind, values in [("confidence", expected.max_prob), ("entropy", expected.entropy)]:
        with Image.open(out / f"x_{kind}.png") as img:
            assert img.size == (56, 40) and np.asarray(img).dtype == np.uint16
        np.testing.assert_allclose(read_png16(out / f"x_{kind}.png"), values, atol=1 / 65535)
    with Image.open(out / "x_confidence_heatmap.png") as heat:
        assert heat.mode == "RGB" and heat.size == (56, 40)
    # the overlay is dimmed exactly where the probability is below 0.5
    low = expected.max_prob < 0.5
    assert low.any() and (~low).any()
    assert main(["predict", *head, "--input", str(path), "--output", str(tmp_path / "plain"),
                 *opts]) == 0  # fmt: skip
    assert not (tmp_path / "plain" / "x_confidence.png").exists()
    plain = np.asarray(Image.open(tmp_path / "plain" / "x_overlay.png"))
    dimmed = np.asarray(Image.open(out / "x_overlay.png"))
    np.testing.assert_array_equal(dimmed[~low], plain[~low])
    assert (dimmed[low] < plain[low]).any()


def test_predict_refuses_a_min_confidence_outside_0_1(tmp_path, model_args, capsys):
    (path,) = _images(tmp_path, ["x.png"])
    head, opts = model_args
    code = main(["predict", *head, "--input", str(path), "--output", str(tmp_path / "o"),
                 "--min-confidence", "2", *opts])  # fmt: skip
    assert code == 2 and "--min-confidence" in capsys.readouterr().err


def test_collect_inputs_expands_folders_globs_and_keeps_names_apart(tmp_path):
    _images(tmp_path, ["d1/x.png", "d2/x.png", "top.jpg", "note.txt.png"])
    (tmp_path / "readme.txt").write_text("not an image")
    items = collect_inputs(
        [str(tmp_path / "d1"), str(tmp_path / "*.jpg"), str(tmp_path / "d1" / "x.png"),
         str(tmp_path / "d2" / "x.png"), str(tmp_path / "missing.png")]
    )  # fmt: skip
    names = [n for _, n in items]
    assert names == ["x", "top", "x-2", "missing"]  # d1/x.png given twice is predicted once
    assert items[-1][0].endswith("missing.png")


def test_missing_input_file_is_reported(tmp_path, model_args, capsys):
    head, opts = model_args
    (good,) = _images(tmp_path, ["ok.png"])
    code = main(["predict", *head, "--input", str(good), str(tmp_path / "nope.png"),
                 "--output", str(tmp_path / "o"), *opts])  # fmt: skip
    assert code == 1
    assert "nope.png" in capsys.readouterr().err
    assert (tmp_path / "o" / "ok_labels.png").is_file()


def test_cityscapes_labelids_export_is_found_by_the_official_script(tmp_path, model_args, capsys):
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_eval

    test_dir = tmp_path / "leftImg8bit" / "test"
    _images(test_dir, ["berlin/berlin_000000_000019_leftImg8bit.png",
                       "bonn/bonn_000001_000042_leftImg8bit.png", "bonn/holiday.png"])  # fmt: skip
    out = tmp_path / "submission"
    head, opts = model_args
    code = main(["predict", *head, "--input", str(test_dir), "--output", str(out),
                 "--cityscapes-labelids", *opts])  # fmt: skip
    assert code == 1 and "holiday.png" in capsys.readouterr().err  # not a Cityscapes name
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == [
        "berlin/berlin_000000_000019_leftImg8bit_labelIds.png",
        "bonn/bonn_000001_000042_leftImg8bit_labelIds.png",
    ]
    for f in files:
        values = set(np.unique(np.asarray(Image.open(out / f))).tolist())
        assert values <= CITYSCAPES_LABEL_IDS
    # the benchmark's own matching finds exactly our file for each ground-truth name
    args = copy.copy(cs_eval.args)
    args.predictionPath, args.predictionWalk = str(out), None
    found = cs_eval.getPrediction(args, "gtFine/test/bonn/bonn_000001_000042_gtFine_labelIds.png")
    assert Path(found) == out / files[1]


def test_command_line_entry_point_exit_status(tmp_path, model_args):
    _images(tmp_path / "in", ["one.png"])
    _corrupt(tmp_path / "in" / "zero.png")
    head, opts = model_args
    cmd = [sys.executable, "-m", "atrous.cli.main", "predict", *head, "--input",
           str(tmp_path / "in"), "--output", str(tmp_path / "out"), *opts]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "zero.png" in proc.stderr
    assert (tmp_path / "out" / "one_overlay.png").is_file()
    bad = subprocess.run([*cmd[:-len(opts)], "NO.SUCH_KEY", "1"], capture_output=True,
                         text=True, env=env, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "NO.SUCH_KEY" in bad.stderr


def test_exported_labelids_score_like_the_evaluator(
    tmp_path, model_args, reference_dir, synthetic_cityscapes_root, monkeypatch
):
    """Benchmark export of a dataset, scored by cityscapesscripts, equals the evaluator's IoU."""
    from atrous.config import get_cfg
    from atrous.data import build_test_loader
    from atrous.evaluation.cityscapes import evaluate_cityscapes_files
    from atrous.evaluation.inference import build_evaluator, inference_on_dataset
    from atrous.inference import Predictor

    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent))
    head, opts = model_args
    out = tmp_path / "submission"
    code = main(["predict", *head, "--dataset", "synthetic_sem_seg_val", "--output", str(out),
                 "--cityscapes-labelids", *opts])  # fmt: skip
    assert code == 0
    gt_files = sorted(str(p) for p in synthetic_cityscapes_root.glob("gtFine/val/*/*_labelIds.png"))
    assert len(list(out.rglob("*_labelIds.png"))) == len(gt_files) == 4
    exported = evaluate_cityscapes_files(out, gt_files)

    cfg = get_cfg()
    cfg.merge_from_file(str(V3PLUS_CONFIG))
    cfg.merge_from_list([*opts, "DATALOADER.NUM_WORKERS", "0"])
    predictor = Predictor(cfg)
    loader = build_test_loader(cfg, "synthetic_sem_seg_val")
    results = inference_on_dataset(predictor, loader, build_evaluator(cfg, "synthetic_sem_seg_val"))
    assert results["sem_seg"]["IoU"] == 100 * exported["averageScoreClasses"]
    assert results["sem_seg"]["iIoU"] == 100 * exported["averageScoreInstClasses"]


def test_predict_skips_a_decompression_bomb_naming_the_file_and_the_key(
    tmp_path, model_args, capsys
):
    from tests.data.bombs import bomb_png

    src = tmp_path / "photos"
    _images(src, ["a.png"])
    bomb = bomb_png(src / "bomb.png", 20000, 20000)  # 1 MB on disk, 1.2 GB decoded
    small = tmp_path / "small"
    _images(small, ["b.png"])  # 40 x 56 = 2240 pixels
    head, opts = model_args
    out = tmp_path / "out"
    assert main(["predict", *head, "--input", str(src), "--output", str(out), *opts]) == 1
    err = capsys.readouterr().err
    assert f"{bomb}: the image is 20000 x 20000 = 400,000,000 pixels" in err
    assert "(INPUT.MAX_IMAGE_PIXELS)" in err and "1 of 2 images failed" in err
    assert (out / "a_labels.png").is_file() and not list(out.glob("bomb*"))
    # the config key is honoured: a budget below the image's size refuses it, 0 lifts the limit
    args = ["predict", *head, "--input", str(small), "--output", str(out), *opts]
    assert main([*args, "INPUT.MAX_IMAGE_PIXELS", "2239"]) == 1
    assert "2,240 pixels, more than the limit of 2,239" in capsys.readouterr().err
    assert main([*args, "INPUT.MAX_IMAGE_PIXELS", "0"]) == 0


def test_predict_refuses_an_output_folder_in_use(tmp_path, model_args, capsys, lock_holder):
    _images(tmp_path / "photos", ["a.png"])
    out = tmp_path / "out"
    holder = lock_holder(out)
    head, opts = model_args
    code = main(["predict", *head, "--input", str(tmp_path / "photos"), "--output", str(out),
                 *opts])  # fmt: skip
    assert code == 1  # a run-time refusal, as in `atrous train`
    assert f"in use by another atrous run: PID {holder.pid}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".atrous.lock"]  # no picture written


def test_predict_with_a_bundle_writes_the_same_labels(tmp_path, model_args, reference_bundle):
    # reference_bundle holds the model of `model_args` (same overrides, same weights).
    src = tmp_path / "photos"
    _images(src, ["a.png", "sub/b.png"], size=(48, 72))
    head, opts = model_args
    assert main(["predict", *head, "--input", str(src), "--output", str(tmp_path / "cfg"),
                 *opts]) == 0  # fmt: skip
    assert main(["predict", "--model", str(reference_bundle), "--input", str(src),
                 "--output", str(tmp_path / "bundle")]) == 0  # fmt: skip
    for name in ["a", "sub/b"]:
        with (
            Image.open(tmp_path / "cfg" / f"{name}_labels.png") as expected,
            Image.open(tmp_path / "bundle" / f"{name}_labels.png") as got,
        ):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
            assert got.getpalette() == expected.getpalette()  # colours from bundle.json


def test_predict_with_exported_graphs_writes_the_same_pictures(
    tmp_path, model_args, reference_exports
):
    # reference_exports hold the model of `model_args`.
    src = tmp_path / "photos"
    _images(src, ["a.png", "sub/b.png"], size=(48, 72))
    _images(src, ["c.png"], size=(37, 61))  # another size: a batch of two sizes is padded
    head, opts = model_args
    graph_opts = [*SMALL_REFERENCE_OVERRIDES, "INPUT.MIN_SIZE_TEST", "0"]  # no MODEL.WEIGHTS
    common = ["--input", str(src), "--batch-size", "2"]
    assert main(["predict", *head, *common, "--output", str(tmp_path / "torch"), *opts]) == 0
    runs = {
        "onnx": [*head, "--model", str(reference_exports["onnx"]), *common],
        "openvino": [*head, "--model", str(reference_exports["openvino"]), *common],
        "folder": ["--model", str(reference_exports["folder"]), *common],
    }
    for run, args in runs.items():
        more = [] if run == "folder" else graph_opts
        assert main(["predict", *args, "--output", str(tmp_path / run), *more]) == 0, run
        for name in ["a", "sub/b", "c"]:
            for kind in ("labels", "overlay", "legend"):
                with (
                    Image.open(tmp_path / "torch" / f"{name}_{kind}.png") as expected,
                    Image.open(tmp_path / run / f"{name}_{kind}.png") as got,
                ):
                    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
                    assert got.getpalette() == expected.getpalette()


def test_predict_refuses_a_damaged_bundle_and_ambiguous_models(
    tmp_path, model_args, reference_bundle, capsys
):
    import shutil

    (image,) = _images(tmp_path, ["x.png"])
    bundle = Path(shutil.copytree(reference_bundle, tmp_path / "bundle"))
    (bundle / "model.safetensors").unlink()
    code = main(["predict", "--model", str(bundle), "--input", str(image),
                 "--output", str(tmp_path / "o")])  # fmt: skip
    assert code == 1  # a damaged bundle is a checkpoint error
    assert "model.safetensors is missing" in capsys.readouterr().err
    head, _ = model_args
    code = main(["predict", *head, "--model", str(reference_bundle), "--input", str(image),
                 "--output", str(tmp_path / "o")])  # fmt: skip
    assert code == 2 and "either --config-file or --model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_one_bad_image_does_not_end_the_batch(tmp_path, model_args, capsys):
    src = tmp_path / "photos"
    _images(src, ["a.png", "c.png"])
    _images(src, ["b_thin.png"], size=(1, 4000))  # a 4000x1 strip: resized to 0 pixels high
    head, opts = model_args
    opts = [*opts, "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128"]
    out = tmp_path / "out"
    for batch in ("1", "3"):
        code = main(["predict", *head, "--input", str(src), "--output", str(out),
                     "--batch-size", batch, *opts])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 1, err
        assert "1 of 3 images failed" in err and "b_thin.png" in err
        assert "Traceback" not in err
        assert (out / "a_labels.png").is_file() and (out / "c_labels.png").is_file()


def test_inputs_that_are_not_regular_files_are_refused_unread(tmp_path, model_args, capsys):
    src = tmp_path / "photos"
    (good,) = _images(src, ["a.png"])
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it would wait for a writer for ever
    head, opts = model_args
    code = main(["predict", *head, "--input", "/dev/zero", str(fifo), str(good), "--output",
                 str(tmp_path / "out"), *opts])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "2 of 3 images failed" in err
    assert "/dev/zero is a character device, not an image file" in err
    assert f"{fifo} is a named pipe, not an image file" in err


def test_a_file_far_larger_than_its_header_says_is_refused_unread(tmp_path, model_args, capsys):
    (path,) = _images(tmp_path, ["sparse.png"])
    with open(path, "r+b") as f:  # a sparse tail: 200 MB on paper, nothing on disk
        f.truncate(200 << 20)
    head, opts = model_args
    code = main(["predict", *head, "--input", str(path), "--output", str(tmp_path / "out"),
                 *opts])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "209,715,200 bytes, far more than a 56x40 image needs" in err


def test_max_output_mb_covers_the_confidence_maps_and_pictures(tmp_path, model_args, capsys):
    # 96x128 with 19 classes: logits and labels take 0.98 MiB, within 1 MiB; with the two
    # confidence maps the prediction needs 1.08 MiB.
    (path,) = _images(tmp_path, ["x.png"], size=(96, 128))
    head, opts = model_args
    args = ["predict", *head, "--input", str(path), "--output", str(tmp_path / "o")]
    limit = [*opts, "TEST.MAX_OUTPUT_MB", "1"]
    assert main([*args, "--confidence", *limit]) == 1
    err = capsys.readouterr().err
    assert "x.png" in err and "TEST.MAX_OUTPUT_MB" in err and "confidence maps" in err
    assert not list((tmp_path / "o").glob("x_*"))
    assert main([*args, *limit]) == 0
    assert main([*args, "--confidence", *opts]) == 0


def test_long_file_names_and_output_inside_the_input_folder(tmp_path, model_args, capsys):
    src = tmp_path / "photos"
    long_name = "p" * 240 + ".png"
    _images(src, [long_name, "b.png"])
    head, opts = model_args
    args = ["predict", *head, "--input", str(src), "--output", str(src), *opts]
    assert main(args) == 0, capsys.readouterr().err
    outputs = sorted(p.name for p in src.iterdir())
    assert len([n for n in outputs if n.endswith("_labels.png")]) == 2
    assert main(args) == 0  # a rerun predicts the two photos, not its own pictures
    assert sorted(p.name for p in src.iterdir()) == outputs


def test_files_that_no_prediction_wrote_are_never_replaced(tmp_path, model_args, capsys):
    src = tmp_path / "photos"
    _images(src, ["a.png", "b.png"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_overlay.png").write_bytes(b"the user's own overlay")
    head, opts = model_args
    args = ["predict", *head, "--input", str(src), "--output", str(out), *opts]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 of 2 images failed" in err
    assert f"{out / 'a_overlay.png'} exists and was not written by atrous predict" in err
    assert (out / "a_overlay.png").read_bytes() == b"the user's own overlay"
    assert not (out / "a_labels.png").exists() and (out / "b_labels.png").is_file()
    (out / "a_overlay.png").unlink()
    assert main(args) == 0  # its own files from the first run are replaced
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        f"{n}_{kind}.png" for n in "ab" for kind in ("labels", "legend", "overlay")
    ]
