"""Writing model bundles: contents, the model card, metrics found next to the weights, replacing."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import atrous
from atrous.checkpoint import Checkpointer, load_bundle
from atrous.deploy.bundle_writer import find_final_metrics, flops_input_size, write_bundle
from atrous.deploy.flops import count_model_flops
from atrous.modeling import build_model
from atrous.utils.file_io import sha256_file
from tests.helpers import V3PLUS_CONFIG, load_config, reference_bundle_overrides


@pytest.fixture
def cfg_and_model(reference_dir):
    cfg = load_config(V3PLUS_CONFIG, reference_bundle_overrides(reference_dir))
    model = build_model(cfg)
    Checkpointer(model).load(cfg.MODEL.WEIGHTS)
    return cfg, model.eval()


def test_bundle_contents(reference_bundle, reference_dir):
    assert sorted(p.name for p in reference_bundle.iterdir()) == [
        "README.md", "bundle.json", "config.yaml", "model.safetensors"
    ]  # fmt: skip
    meta = json.loads((reference_bundle / "bundle.json").read_text())
    for name in ("config.yaml", "model.safetensors", "README.md"):
        assert meta["files"][name]["sha256"] == sha256_file(reference_bundle / name)
    assert meta["atrous_version"] == atrous.__version__
    assert meta["torch_version"] == torch.__version__
    assert len(meta["classes"]) == 19 and meta["classes"][-1] == "bicycle"
    assert meta["colors"][0] == [128, 64, 128] and meta["ignore_value"] == 255
    assert meta["input"] == {
        "format": "RGB",
        "pixel_mean": [123.675, 116.28, 103.53],
        "pixel_std": [58.395, 57.12, 57.375],
        "min_size_test": 0,
        "max_size_test": 2048,
    }
    assert meta["datasets"]["train"] == ["cityscapes_fine_sem_seg_train"]
    assert meta["datasets"]["classes_from"] == "cityscapes_fine_sem_seg_val"
    assert meta["metrics"] is None  # the reference .pkl has no training folder around it
    assert meta["source_weights"] == "small_v3plus.pkl"
    assert meta["architecture"]["backbone_depth"] == 50
    assert meta["architecture"]["head"] == "DeepLabV3PlusHead"

    config = (reference_bundle / "config.yaml").read_text()
    assert "WEIGHTS: model.safetensors" in config and "DEVICE: auto" in config
    with safe_open(reference_bundle / "model.safetensors", "pt") as f:
        assert f.metadata()["atrous_version"] == atrous.__version__
        assert f.metadata()["bundle"] == "small_v3plus"


def test_model_card_numbers(reference_bundle, cfg_and_model):
    _, model = cfg_and_model
    meta = json.loads((reference_bundle / "bundle.json").read_text())
    parameters = sum(p.numel() for p in model.parameters())
    assert meta["parameters"] == parameters
    h, w = meta["flops"]["input_size"]
    assert (h, w) == (512, 1024)  # MIN_SIZE_TEST 0: no test-time resize, a 1:2 frame is used
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    expected_flops = count_model_flops(model, [{"image": image, "height": h, "width": w}])
    assert meta["flops"]["flops"] == expected_flops

    card = (reference_bundle / "README.md").read_text()
    assert card.startswith("# small_v3plus: DeepLabV3+, ResNet-50, 19 classes")
    assert f"({parameters:,})" in card and "GFLOPs for one 512x1024 image" in card
    assert "| 0 | road | (128, 64, 128) |" in card and "| 18 | bicycle |" in card
    assert "atrous predict --model small_v3plus --input photos/" in card
    assert 'Predictor.from_bundle("small_v3plus")' in card


def test_flops_size_follows_the_test_resize(tiny_cfg):
    tiny_cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", "1024", "INPUT.MAX_SIZE_TEST", "2048"])
    assert flops_input_size(tiny_cfg) == (1024, 2048)
    tiny_cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", "192", "INPUT.MAX_SIZE_TEST", "256"])
    assert flops_input_size(tiny_cfg) == (128, 256)


def _training_folder(tmp_path, model):
    """What training leaves: model_final.pth, metrics.json, the final evaluation's JSON."""
    run = tmp_path / "run"
    Checkpointer(model, run).save("model_0000004", iteration=4)
    Checkpointer(model, run).save("model_final", iteration=9)
    records = [
        {"iteration": 3, "total_loss": 2.0},
        {"iteration": 4, "sem_seg/mIoU": 10.0, "sem_seg/IoU-road": 50.0},
        {"iteration": 9, "sem_seg/mIoU": 21.5, "sem_seg/pACC": 70.0, "total_loss": 1.0},
    ]
    (run / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    evaluation = run / "inference" / "cityscapes_fine_sem_seg_val" / "sem_seg_evaluation.json"
    evaluation.parent.mkdir(parents=True)
    evaluation.write_text(json.dumps({
        "dataset": "cityscapes_fine_sem_seg_val", "num_images": 4,
        "metrics": {"mIoU": 22.25, "fwIoU": 40.0, "IoU-road": 80.0},
    }))  # fmt: skip
    return run, evaluation


def test_final_metrics_next_to_the_weights(tmp_path, cfg_and_model):
    _, model = cfg_and_model
    run, evaluation = _training_folder(tmp_path, model)
    tests = ["cityscapes_fine_sem_seg_val"]
    found = find_final_metrics(str(run / "model_final.pth"), tests)
    assert found == {
        "source": "inference/cityscapes_fine_sem_seg_val/sem_seg_evaluation.json",
        "dataset": "cityscapes_fine_sem_seg_val",
        "iteration": None,
        "values": {"sem_seg/mIoU": 22.25, "sem_seg/fwIoU": 40.0},
    }
    evaluation.unlink()
    found = find_final_metrics(str(run / "model_final.pth"), tests)
    assert found["source"] == "metrics.json" and found["iteration"] == 9
    assert found["values"] == {"sem_seg/mIoU": 21.5, "sem_seg/pACC": 70.0}
    # an earlier snapshot is not what the final metrics measured
    assert find_final_metrics(str(run / "model_0000004.pth"), tests) is None
    assert find_final_metrics("DeepLabV3+_R103", tests) is None


def test_bundle_records_and_cards_the_final_metrics(tmp_path, cfg_and_model):
    cfg, model = cfg_and_model
    run, _ = _training_folder(tmp_path, model)
    cfg.MODEL.WEIGHTS = str(run / "model_final.pth")
    path = write_bundle(tmp_path / "bundle", cfg=cfg, model=model)
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["metrics"]["values"]["sem_seg/mIoU"] == 22.25
    assert meta["source_weights"] == "model_final.pth"
    card = (path / "README.md").read_text()
    assert "mIoU 22.25, fwIoU 40.00 on cityscapes_fine_sem_seg_val" in card
    assert load_bundle(path).metadata.metrics == meta["metrics"]


def test_replacing_a_bundle_and_refusing_other_folders(tmp_path, reference_bundle, cfg_and_model):
    cfg, model = cfg_and_model
    target = tmp_path / "bundle"
    write_bundle(target, cfg=cfg, model=model)
    with torch.no_grad():
        model.sem_seg_head.predictor.bias += 1.0
    write_bundle(target, cfg=cfg, model=model)  # an existing bundle is replaced
    loaded = load_bundle(target)
    assert torch.equal(loaded.model.sem_seg_head.predictor.bias, model.sem_seg_head.predictor.bias)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary folders left

    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="not a model bundle; refusing"):
        write_bundle(other, cfg=cfg, model=model)
    assert [p.name for p in other.iterdir()] == ["holiday.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "photos"]
