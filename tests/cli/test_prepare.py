"""`atrous prepare coco|labelme|cvat`: the README walk-through run as written, then the command's
exit statuses (check-dataset's verdict, one-line errors)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atrous.cli.main import main
from tests.helpers import TINY

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

REPO = Path(__file__).resolve().parents[2]


def _walkthrough_commands(block: int = 0) -> list[list[str]]:
    """A bash block of the README's "From an annotation tool", one argv per command."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n### From an annotation tool\n", 1)[1].split("\n### ", 1)[0]
    code = re.findall(r"```bash\n(.*?)```", section, re.S)[block]
    lines = [ln for ln in code.replace("\\\n", " ").splitlines() if ln and ln[0] != "#"]
    return [shlex.split(ln, comments=True) for ln in lines]


def _coco_export(root: Path, *, size=(64, 96), n=(3, 2), unannotated: bool = False) -> None:
    """export/annotations/instances_{train,val}.json with the images in export/images/."""
    h, w = size
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    for split, count in zip(("train", "val"), n):
        images, anns = [], []
        for k in range(count):
            name = f"{split}_{k}.jpg"
            rng = np.random.default_rng(k + 10 * len(split))
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                root / "images" / name
            )
            images.append({"id": k, "file_name": name, "height": h, "width": w})
            if unannotated and k == 0:
                continue
            x = 10 + 5 * k
            anns += [
                {"id": 2 * k, "image_id": k, "category_id": 1, "iscrowd": 0,
                 "segmentation": [[0, h / 2, w, h / 2, w, h, 0, h]]},
                {"id": 2 * k + 1, "image_id": k, "category_id": 2, "iscrowd": 0,
                 "segmentation": [[x, 5, x + 30, 8, x + 20, 40]]},
            ]  # fmt: skip
        data = {"images": images, "annotations": anns,
                "categories": [{"id": 1, "name": "road"}, {"id": 2, "name": "car"}]}  # fmt: skip
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


@pytest.mark.slow
def test_readme_walkthrough_prepares_checks_and_trains(tmp_path, monkeypatch, capsys):
    commands = _walkthrough_commands()
    assert [c[:2] for c in commands] == [
        ["atrous", "prepare"], ["atrous", "check-dataset"], ["atrous", "train"],
    ]  # fmt: skip
    _coco_export(tmp_path / "export")
    monkeypatch.chdir(tmp_path)
    prepare, check, train = commands
    assert main([*prepare[1:], "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "wrote data/streets/dataset.yaml: 2 classes, 3 train, 2 val images" in out
    assert out.count("no defects found") == 2  # both splits checked
    assert (
        """DATASETS.TRAIN '("data/streets/dataset.yaml:train",)' DATASETS.TEST """
        """'("data/streets/dataset.yaml:val",)' MODEL.SEM_SEG_HEAD.NUM_CLASSES 2"""
    ) in out
    for split in ("train", "val"):
        assert (tmp_path / "data/streets/dataset_check" / split / "dataset_report.json").is_file()
    mask = np.asarray(Image.open(tmp_path / "data/streets/masks/train/train_0.png"))
    assert mask[0, 0] == 255 and mask[63, 0] == 0 and mask[10, 22] == 1
    assert main([*check[1:], "--workers", "0", "--no-progress"]) == 0

    # the training command as written, shrunk to one iteration of a tiny model
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    train[-1] = str(tmp_path / "run")
    argv = [*train[1:], *TINY, "SOLVER.MAX_ITER", "1", "TEST.EVAL_PERIOD", "0"]
    argv[argv.index("--config-file") + 1] = str(REPO / argv[argv.index("--config-file") + 1])
    proc = subprocess.run([sys.executable, "-m", "atrous.cli.main", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "model_final.pth").is_file()


def test_check_dataset_defects_make_the_exit_status_1(tmp_path, capsys):
    # an image without annotations: its mask is all ignored, which check-dataset reports
    _coco_export(tmp_path / "export", size=(48, 64), n=(2, 1), unannotated=True)
    args = ["prepare", "coco", str(tmp_path / "export"), "--output", str(tmp_path / "d")]
    assert main([*args, "--workers", "0", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "masks/train/train_0.png: no labelled pixel" in captured.out
    assert (tmp_path / "d" / "dataset.yaml").is_file()  # written all the same


def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys):
    _coco_export(tmp_path / "export", size=(48, 64), n=(1, 1))
    (tmp_path / "export" / "images" / "val_0.jpg").unlink()
    args = ["prepare", "coco", str(tmp_path / "export"), "--output", str(tmp_path / "d")]
    assert main([*args, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ") and "instances_val.json: image id 0: image 'val_0.jpg'" in err
    assert not (tmp_path / "d").exists()


def test_labelme_and_cvat_commands(tmp_path, capsys):
    src = tmp_path / "labelme"
    _labelme_folder(src)
    (tmp_path / "labels.txt").write_text("__ignore__\n_background_\ncat\ndog\n")
    args = ["prepare", "labelme", str(src), "--classes", str(tmp_path / "labels.txt"),
            "--val-fraction", "0.4", "--output", str(tmp_path / "d"), "--workers", "0",
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "3 classes, 3 train, 2 val images" in capsys.readouterr().out

    (tmp_path / "cvat").mkdir()
    assert main(["prepare", "cvat", str(tmp_path / "cvat"), "--output", str(tmp_path / "c")]) == 1
    assert "neither annotations.xml" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --classes is LabelMe's
        main(["prepare", "cvat", "x", "--classes", "a,b", "--output", str(tmp_path / "c")])


def test_readme_commands_for_the_other_tools(tmp_path, monkeypatch, capsys):
    labelme, cvat, coco = _walkthrough_commands(1)
    assert [c[:3] for c in (labelme, cvat, coco)] == [
        ["atrous", "prepare", "labelme"], ["atrous", "prepare", "cvat"],
        ["atrous", "prepare", "coco"],
    ]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    # labelme_files/ with labels.txt; a CVAT Segmentation mask export zipped as task_export.zip;
    # a Label Studio style result.json with its images in photos/
    _labelme_folder(tmp_path / "labelme_files")
    (tmp_path / "labels.txt").write_text("__ignore__\n_background_\ncat\n")
    fixture = REPO / "tests" / "fixtures" / "cvat" / "segmentation_mask_1.1"
    with zipfile.ZipFile(tmp_path / "task_export.zip", "w") as z:
        for f in sorted(fixture.rglob("*")):
            z.write(f, f.relative_to(fixture))
    _coco_export(tmp_path / "ls", size=(48, 64), n=(5, 0))
    (tmp_path / "ls" / "images").rename(tmp_path / "photos")
    (tmp_path / "ls" / "annotations" / "instances_train.json").rename(tmp_path / "result.json")
    quiet = ["--workers", "0", "--no-progress"]
    assert main([*labelme[1:], *quiet]) == 0
    assert "2 classes, 4 train, 1 val images" in capsys.readouterr().out
    assert main([*cvat[1:], *quiet]) == 0
    assert "4 classes, 2 train, 1 val images" in capsys.readouterr().out
    assert main([*coco[1:], *quiet]) == 0
    assert "2 classes, 4 train, 1 val images" in capsys.readouterr().out


def _labelme_folder(folder: Path) -> None:
    folder.mkdir()
    for k in range(5):
        Image.new("RGB", (20, 10), (k, k, k)).save(folder / f"im{k}.png")
        shapes = [{"label": "cat", "points": [[0, 0], [10, 0], [10, 10]], "shape_type": "polygon"}]
        data = {"shapes": shapes, "imagePath": f"im{k}.png", "imageData": None,
                "imageHeight": 10, "imageWidth": 20}  # fmt: skip
        (folder / f"im{k}.json").write_text(json.dumps(data))
