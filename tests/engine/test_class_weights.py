"""CLASS_WEIGHTS method names: computed from the training labels, cached, and fed to the loss."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from atrous.config import get_cfg
from atrous.engine import Trainer, resolve_class_weights
from atrous.engine.class_weights import CACHE_NAME
from tests.helpers import QUICKSTART, REPO_ROOT, TINY


def _dataset(root) -> str:
    """Two 64x64 training pairs: A = half class 0, half class 1; B = all class 0 but a 8x8 of 2."""
    (root / "img").mkdir(parents=True)
    (root / "lab").mkdir()
    a = np.zeros((64, 64), np.uint8)
    a[:, 32:] = 1
    b = np.zeros((64, 64), np.uint8)
    b[:8, :8] = 2
    for name, label in (("a", a), ("b", b)):
        Image.fromarray(np.full((64, 64, 3), 99, np.uint8)).save(root / "img" / f"{name}.png")
        Image.fromarray(label).save(root / "lab" / f"{name}.png")
    spec = {"classes": ["c0", "c1", "c2"], "ignore_value": 255,
            "splits": {"train": {"images": "img", "masks": "lab"}}}  # fmt: skip
    (root / "d.yaml").write_text(yaml.safe_dump(spec))
    return f"{root / 'd.yaml'}:train"


def _cfg(name: str, out, weights: str):
    cfg = get_cfg()
    cfg.merge_from_file(str(QUICKSTART))
    cfg.merge_from_list([*TINY, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3",
                         "MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS", weights,
                         "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()",
                         "OUTPUT_DIR", str(out)])  # fmt: skip
    return cfg


# By hand: c0 = 2048 + 4032 px, c1 = 2048, c2 = 64; images with c0: both (8192 px), c1: A
# (4096), c2: B (4096). freq = 6080/8192, 2048/4096, 64/4096; median 0.5.
MEDIAN_FREQUENCY = [0.5 / (6080 / 8192), 1.0, 0.5 / (64 / 4096)]


def test_median_frequency_is_computed_cached_and_recomputed_when_labels_change(tmp_path, caplog):
    name = _dataset(tmp_path / "data")
    cfg = _cfg(name, tmp_path / "out", "median_frequency")
    with caplog.at_level(logging.INFO, logger="atrous.engine.class_weights"):
        weights = resolve_class_weights(cfg)
    assert weights == pytest.approx(MEDIAN_FREQUENCY, rel=1e-12)
    assert "Class weights (median_frequency): c0 0.6737, c1 1, c2 32" in caplog.text
    cache = json.loads((tmp_path / "out" / CACHE_NAME).read_text())
    assert cache["key"]["datasets"] == [name] and cache["pixels"] == [6080, 2048, 64]

    # The cache is what a second resolution reads (a marked copy proves it).
    cache["weights"] = [1.0, 2.0, 3.0]
    (tmp_path / "out" / CACHE_NAME).write_text(json.dumps(cache))
    assert resolve_class_weights(cfg) == [1.0, 2.0, 3.0]

    # A rewritten label file invalidates it.
    label = tmp_path / "data" / "lab" / "b.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(label)
    os.utime(label, ns=(1, 1))
    assert resolve_class_weights(cfg)[2] == 1.0  # c2 is gone: weight 1


def test_lists_and_none_need_no_data(tmp_path):
    cfg = _cfg("no/such.yaml:train", tmp_path / "out", "[1.0, 2.0, 0.5]")
    assert resolve_class_weights(cfg) == [1.0, 2.0, 0.5]
    assert resolve_class_weights(_cfg("no/such.yaml:train", tmp_path / "out", "None")) is None
    assert not (tmp_path / "out").exists()


def test_an_unreadable_training_label_stops_with_its_name(tmp_path):
    from atrous.data import DatasetError

    name = _dataset(tmp_path / "data")
    (tmp_path / "data" / "lab" / "a.png").write_bytes(b"broken")
    with pytest.raises(DatasetError, match=r"cannot count classes .*lab/a\.png"):
        resolve_class_weights(_cfg(name, tmp_path / "out", "inverse_sqrt_frequency"))


def test_the_trainer_builds_its_loss_with_the_computed_weights(tmp_path):
    name = _dataset(tmp_path / "data")
    for loss_type in ("hard_pixel_mining", "cross_entropy"):
        cfg = _cfg(name, tmp_path / loss_type, "median_frequency")
        cfg.merge_from_list(["MODEL.SEM_SEG_HEAD.LOSS_TYPE", loss_type])
        model = Trainer.build_model(cfg)
        expected = torch.tensor(MEDIAN_FREQUENCY, dtype=torch.float32)
        assert torch.equal(model.loss.weight, expected)
        assert not any("loss" in k for k in model.state_dict())


_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from atrous.config import get_cfg
    from atrous.engine import launch, resolve_class_weights
    from atrous.utils import comm

    def work(cfg_file, out_dir):
        cfg = get_cfg()
        cfg.merge_from_file(cfg_file)
        try:
            result = {"weights": resolve_class_weights(cfg)}
        except Exception as e:
            result = {"error": type(e).__name__ + ": " + str(e)}
        with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
            json.dump(result, f)

    if __name__ == "__main__":
        launch(work, 2, args=(sys.argv[1], sys.argv[2]), backend="gloo")
    """
)


@pytest.mark.slow
def test_two_gloo_processes_get_rank_0s_weights_or_its_error(tmp_path):
    name = _dataset(tmp_path / "data")
    cfg = _cfg(name, tmp_path / "out", "median_frequency")
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(cfg.dump())
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # The package from this checkout, and nothing else that tests put on sys.path.
    env.update(PYTHONPATH=str(REPO_ROOT / "src"), OMP_NUM_THREADS="1", ATROUS_DIST_TIMEOUT="60")

    def run(out: Path) -> list[dict]:
        out.mkdir()
        # Own session and no stdin: the job's processes share nothing with the test runner.
        proc = subprocess.run([sys.executable, str(script), str(cfg_file), str(out)], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=180, start_new_session=True)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]

    ranks = run(tmp_path / "ok")
    for result in ranks:
        assert result["weights"] == pytest.approx(MEDIAN_FREQUENCY, rel=1e-12)
    assert (tmp_path / "out" / CACHE_NAME).is_file()

    (tmp_path / "out" / CACHE_NAME).unlink()
    (tmp_path / "data" / "lab" / "a.png").write_bytes(b"broken")
    for result in run(tmp_path / "broken"):
        assert result["error"].startswith("DatasetError: cannot count classes")
        assert "lab/a.png" in result["error"]


@pytest.mark.parametrize(
    "content",
    ["[1, 2, 3]", '{"key": 5}', '{"weights": ["a", "b", "c"]}', '{"weights": [1, 2]}', "nul"],
)
def test_a_tampered_cache_is_named_and_counted_again(tmp_path, caplog, content):
    name = _dataset(tmp_path / "data")
    cfg = _cfg(name, tmp_path / "out", "median_frequency")
    (tmp_path / "out").mkdir()
    cache = tmp_path / "out" / CACHE_NAME
    cache.write_text(content)
    with caplog.at_level(logging.INFO, logger="atrous.engine.class_weights"):
        weights = resolve_class_weights(cfg)
    assert weights == pytest.approx(MEDIAN_FREQUENCY, rel=1e-12)
    assert f"{cache} is not a class-weights cache atrous wrote" in caplog.text
