import shutil

import numpy as np
import pytest
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


def _tree(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prepare_synthetic_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    # A Cityscapes-layout folder of someone's own images, named as the generator names its own.
    data = tmp_path / "mine"
    for split, city in (("train", "northbrook"), ("val", "lindenfeld"), ("train", "aachen")):
        for i in range(3):
            stem = f"{city}_{i:06d}_000019"
            image = data / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            label = data / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png"
            for path in (image, label):
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (32, 16), i).save(path)
    before = _tree(data)
    args = ["prepare", "synthetic", "--output", str(data), "--num-train", "1", "--num-val", "1"]
    assert main([*args, "--size", "16x32", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{data} is not empty and was not written by the synthetic generator" in err
    assert _tree(data) == before


def test_prepare_synthetic_shrinking_its_own_folder_keeps_foreign_files(tmp_path, capsys):
    out = tmp_path / "syn"
    args = ["prepare", "synthetic", "--output", str(out), "--size", "16x32", "--workers", "1"]
    assert main([*args, "--num-train", "3", "--num-val", "1"]) == 0
    notes = out / "leftImg8bit" / "train" / "northbrook" / "notes.txt"
    notes.write_text("mine")
    lookalike = out / "gtFine" / "train" / "elsewhere" / "northbrook_000002_000019_x.png"
    lookalike.parent.mkdir()
    lookalike.write_bytes(b"mine")
    assert main([*args, "--num-train", "1", "--num-val", "1"]) == 0
    assert len(list((out / "leftImg8bit" / "train").glob("*/*.png"))) == 1
    assert notes.read_text() == "mine" and lookalike.read_bytes() == b"mine"


def test_interrupted_generation_can_be_repeated(tmp_path, monkeypatch, capsys):
    from atrous.data.datasets import synthetic

    out = tmp_path / "syn"
    args = ["prepare", "synthetic", "--output", str(out), "--size", "16x32", "--workers", "1"]
    real = synthetic._write_one
    calls = []

    def crash_after_one(task):
        if calls:
            raise KeyboardInterrupt
        calls.append(task)
        real(task)

    monkeypatch.setattr(synthetic, "_write_one", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--num-train", "2", "--num-val", "1"])
    monkeypatch.setattr(synthetic, "_write_one", real)
    assert main([*args, "--num-train", "2", "--num-val", "1"]) == 0
    assert len(list(out.glob("leftImg8bit/*/*/*.png"))) == 3
