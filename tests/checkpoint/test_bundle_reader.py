"""Reading model bundles: the round trip, and every kind of damaged bundle refused by name."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

import atrous
from atrous.checkpoint import BundleError, Checkpointer, is_bundle, load_bundle, save_weights
from atrous.checkpoint.bundle_reader import bundle_config, read_bundle_metadata
from atrous.config import ConfigError
from atrous.modeling import build_model
from atrous.utils.file_io import sha256_file
from tests.helpers import V3PLUS_CONFIG, load_config, reference_bundle_overrides


@pytest.fixture
def bundle(reference_bundle, tmp_path) -> Path:
    """A private copy of the reference bundle, free to damage."""
    return Path(shutil.copytree(reference_bundle, tmp_path / "bundle"))


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text())


def _write_meta(bundle: Path, meta: dict) -> None:
    (bundle / "bundle.json").write_text(json.dumps(meta))


def _rehash(bundle: Path, name: str) -> None:
    """Record a changed file's new sha256, so that a check behind the hash is what fails."""
    meta = _meta(bundle)
    meta["files"][name]["sha256"] = sha256_file(bundle / name)
    _write_meta(bundle, meta)


def test_bundle_loads_the_exact_model_config_and_metadata(reference_bundle, reference_dir):
    loaded = load_bundle(reference_bundle)
    assert loaded.report.ok and not loaded.model.training
    cfg = load_config(V3PLUS_CONFIG, reference_bundle_overrides(reference_dir))
    reference = build_model(cfg)
    Checkpointer(reference).load(cfg.MODEL.WEIGHTS)
    ours, theirs = loaded.model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    assert loaded.cfg.MODEL.WEIGHTS == str((reference_bundle / "model.safetensors").resolve())
    assert loaded.cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 19 and loaded.cfg.INPUT.MIN_SIZE_TEST == 0
    meta = loaded.metadata
    assert meta.stuff_classes[0] == "road" and meta.stuff_colors[0] == (128, 64, 128)
    assert meta.num_classes == 19 and meta.ignore_label == 255 and meta.input_format == "RGB"
    assert meta.pixel_mean == tuple(cfg.MODEL.PIXEL_MEAN)
    assert meta.atrous_version == atrous.__version__ and meta.torch_version == torch.__version__
    assert is_bundle(reference_bundle) and not is_bundle(reference_bundle / "model.safetensors")


def test_overrides_and_device_apply_and_weights_cannot_be_replaced(reference_bundle):
    cfg, _ = bundle_config(reference_bundle, opts=["TEST.AUG.ENABLED", "True"], device="cpu")
    assert cfg.TEST.AUG.ENABLED and cfg.MODEL.DEVICE == "cpu"
    with pytest.raises(ConfigError, match="brings its own weights"):
        bundle_config(reference_bundle, opts=["MODEL.WEIGHTS", "other.pth"])


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="is not a model bundle folder"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "folder").mkdir()
    with pytest.raises(BundleError, match=r"folder/bundle\.json is missing"):
        load_bundle(tmp_path / "folder")


@pytest.mark.parametrize("name", ["model.safetensors", "config.yaml", "README.md"])
def test_missing_file_is_named(bundle, name):
    (bundle / name).unlink()
    with pytest.raises(BundleError, match=rf"{name} is missing.*lists it"):
        load_bundle(bundle)


def test_edited_config_fails_its_sha256(bundle):
    with open(bundle / "config.yaml", "a") as f:
        f.write("# tweaked\n")
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    message = str(info.value)
    assert f"{bundle / 'config.yaml'} was changed after the bundle was written" in message
    assert _meta(bundle)["files"]["config.yaml"]["sha256"] in message


def test_edited_weights_fail_their_sha256(bundle):
    path = bundle / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.safetensors was changed"):
        load_bundle(bundle)


def test_damaged_bundle_json(bundle):
    (bundle / "bundle.json").write_text('{"format": "atrous-model-bundle", ')
    with pytest.raises(BundleError, match=r"bundle\.json is not valid JSON"):
        load_bundle(bundle)
    (bundle / "bundle.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="does not describe an atrous model bundle"):
        load_bundle(bundle)


def test_bundle_from_a_newer_format_asks_for_an_upgrade(bundle):
    meta = _meta(bundle)
    meta["format_version"] = 99
    _write_meta(bundle, meta)
    with pytest.raises(BundleError, match=r"format version 99.*Upgrade atrous"):
        load_bundle(bundle)


def test_listed_files_must_stay_inside_the_bundle(bundle):
    meta = _meta(bundle)
    meta["files"]["../outside.txt"] = {"sha256": "0" * 64}
    _write_meta(bundle, meta)
    with pytest.raises(BundleError, match="no folders"):
        load_bundle(bundle)


def test_class_names_disagreeing_with_the_config(bundle):
    meta = _meta(bundle)
    meta["classes"], meta["colors"] = meta["classes"][:-1], meta["colors"][:-1]
    _write_meta(bundle, meta)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    message = str(info.value)
    assert "bundle.json disagrees with" in message and "config.yaml" in message
    assert "18 class names but MODEL.SEM_SEG_HEAD.NUM_CLASSES is 19" in message


def test_classes_and_colours_must_pair_up(bundle):
    meta = _meta(bundle)
    meta["colors"] = meta["colors"][:3]
    _write_meta(bundle, meta)
    with pytest.raises(BundleError, match="19 classes but 3 colours"):
        load_bundle(bundle)


def test_config_edited_and_rehashed_still_contradicts_the_metadata(bundle):
    config = bundle / "config.yaml"
    config.write_text(config.read_text().replace("NUM_CLASSES: 19", "NUM_CLASSES: 7"))
    _rehash(bundle, "config.yaml")
    with pytest.raises(
        BundleError, match=r"19 class names but MODEL\.SEM_SEG_HEAD\.NUM_CLASSES is 7"
    ):
        load_bundle(bundle)


def test_config_naming_other_weights_is_refused(bundle):
    config = bundle / "config.yaml"
    config.write_text(
        config.read_text().replace("WEIGHTS: model.safetensors", "WEIGHTS: DeepLabV3+_R103")
    )
    _rehash(bundle, "config.yaml")
    with pytest.raises(BundleError, match=r"sets MODEL\.WEIGHTS 'DeepLabV3\+_R103'"):
        load_bundle(bundle)


def test_weights_of_another_model_are_named(bundle, reference_dir):
    cfg = load_config(
        V3PLUS_CONFIG,
        [*reference_bundle_overrides(reference_dir), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7"],
    )
    save_weights(bundle / "model.safetensors", build_model(cfg).state_dict())
    _rehash(bundle, "model.safetensors")
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    message = str(info.value)
    assert "model.safetensors does not fit the model" in message and "config.yaml" in message
    assert (
        "sem_seg_head.predictor.weight: checkpoint (7, 32, 1, 1), model (19, 32, 1, 1)" in message
    )


def test_hostile_weights_behind_a_valid_hash_are_refused(bundle):
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (bundle / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0")
    _rehash(bundle, "model.safetensors")
    with pytest.raises(BundleError, match="not a valid safetensors file"):
        load_bundle(bundle)


def test_extra_files_in_the_folder_are_allowed(bundle):
    (bundle / "notes.txt").write_text("evaluated on our street photos, looks fine")
    assert read_bundle_metadata(bundle).num_classes == 19


def test_bundle_files_must_live_in_the_bundle(bundle, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(bundle / "model.safetensors", outside)
    (bundle / "model.safetensors").symlink_to(outside)  # same bytes, same sha256
    with pytest.raises(BundleError, match=r"model\.safetensors is a symbolic link"):
        load_bundle(bundle)


def test_hostile_bundle_json_is_refused_in_one_line(bundle):
    meta = _meta(bundle)
    meta["classes"][0] = "x" * 1_000_000
    _write_meta(bundle, meta)
    with pytest.raises(BundleError) as info:
        read_bundle_metadata(bundle)
    assert "class 0 has a name of 1,000,000 characters" in str(info.value)
    assert len(str(info.value)) < 500

    (bundle / "bundle.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(BundleError, match="nested too deeply"):
        read_bundle_metadata(bundle)
