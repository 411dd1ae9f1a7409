import shutil

import numpy as np
from PIL import Image

from atrous.cli.main import main
from atrous.data.benchmark import benchmark_train_pipeline


def test_prepare_cityscapes_recreates_train_ids(synthetic_cityscapes_root, tmp_path, capsys):
    root = tmp_path / "cityscapes"
    shutil.copytree(synthetic_cityscapes_root, root)
    originals = {
        p: np.asarray(Image.open(p)) for p in sorted(root.glob("gtFine/*/*/*_labelTrainIds.png"))
    }
    for p in originals:
        p.unlink()
    assert main(["prepare", "cityscapes", "--root", str(root), "--workers", "2"]) == 0
    assert "wrote 12 " in capsys.readouterr().out
    for p, expected in originals.items():
        np.testing.assert_array_equal(np.asarray(Image.open(p)), expected)
    assert not list(root.glob("gtFine/*/*/*.tmp"))
    assert main(["prepare", "cityscapes", "--root", str(root)]) == 0  # nothing left to do
    assert "wrote 0 " in capsys.readouterr().out


def test_prepare_cityscapes_without_polygons_fails_clearly(tmp_path, capsys):
    assert main(["prepare", "cityscapes", "--root", str(tmp_path)]) == 1
    assert "gtFine_trainvaltest.zip" in capsys.readouterr().err


def test_prepare_synthetic(tmp_path, capsys):
    out = tmp_path / "syn"
    args = ["prepare", "synthetic", "--output", str(out), "--num-train", "2", "--num-val", "1"]
    assert main([*args, "--size", "48x96", "--seed", "3", "--workers", "1"]) == 0
    images = sorted(out.glob("leftImg8bit/*/*/*.png"))
    assert len(images) == 3 and Image.open(images[0]).size == (96, 48)
    assert main([*args, "--size", "8x8"]) == 1
    assert "at least 16x16" in capsys.readouterr().err


def test_data_benchmark_runs_and_checks_identity():
    result = benchmark_train_pipeline(num_images=2, size=(64, 128), iterations=3, warmup=1)
    assert result["identical"] and result["samples"] == 3
    assert result["fast_images_per_s"] > 0 and result["baseline_images_per_s"] > 0
