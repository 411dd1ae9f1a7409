"""Config: detectron2 keys and defaults, _BASE_ inheritance, overrides, clear errors."""

from __future__ import annotations

import pytest
import yaml

from atrous.config import ConfigError, get_cfg
from tests.helpers import CONFIG_DIR, V3_CONFIG, V3PLUS_CONFIG, load_config


def test_defaults_match_detectron2_and_deeplab_project():
    cfg = get_cfg()
    assert cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == 255
    assert cfg.MODEL.SEM_SEG_HEAD.LOSS_TYPE == "hard_pixel_mining"
    assert cfg.MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS == [48]
    assert cfg.MODEL.RESNETS.RES5_MULTI_GRID == [1, 2, 4]
    assert cfg.MODEL.RESNETS.STEM_TYPE == "deeplab"
    assert cfg.SOLVER.POLY_LR_POWER == 0.9
    assert cfg.SOLVER.POLY_LR_CONSTANT_ENDING == 0.0
    assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 1.0
    assert cfg.SOLVER.WARMUP_FACTOR == pytest.approx(0.001)
    assert cfg.SOLVER.WARMUP_ITERS == 1000


def test_get_cfg_returns_independent_copies():
    a, b = get_cfg(), get_cfg()
    a.SOLVER.BASE_LR = 123.0
    assert b.SOLVER.BASE_LR != 123.0


@pytest.mark.parametrize("path", [V3_CONFIG, V3PLUS_CONFIG])
def test_seed_configs_resolve_to_the_original_values(path):
    cfg = load_config(path)
    assert cfg.MODEL.WEIGHTS == "detectron2://DeepLab/R-103.pkl"
    assert cfg.MODEL.RESNETS.DEPTH == 101
    assert cfg.MODEL.RESNETS.NORM == "SyncBN"
    assert cfg.MODEL.RESNETS.RES5_DILATION == 2
    assert cfg.MODEL.RESNETS.STEM_OUT_CHANNELS == 128
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.MODEL.PIXEL_MEAN == [123.675, 116.280, 103.530]
    assert cfg.MODEL.PIXEL_STD == [58.395, 57.120, 57.375]
    assert cfg.INPUT.FORMAT == "RGB"
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (512, 768, 1024, 1280, 1536, 1792, 2048)
    assert (cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (
        4096,
        1024,
        2048,
    )
    assert cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute"
    assert list(cfg.INPUT.CROP.SIZE) == [512, 1024]
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR"
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH) == (0.01, 90000, 16)
    assert cfg.DATASETS.TRAIN == ("cityscapes_fine_sem_seg_train",)
    assert cfg.DATASETS.TEST == ("cityscapes_fine_sem_seg_val",)
    assert cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS == [6, 12, 18]
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 19


def test_v3_and_v3plus_differ_where_the_originals_do():
    v3, v3p = load_config(V3_CONFIG), load_config(V3PLUS_CONFIG)
    assert (v3.MODEL.SEM_SEG_HEAD.NAME, v3.MODEL.SEM_SEG_HEAD.COMMON_STRIDE) == (
        "DeepLabV3Head",
        16,
    )
    assert v3.MODEL.RESNETS.OUT_FEATURES == ["res5"]
    assert (v3p.MODEL.SEM_SEG_HEAD.NAME, v3p.MODEL.SEM_SEG_HEAD.COMMON_STRIDE) == (
        "DeepLabV3PlusHead",
        4,
    )
    assert v3p.MODEL.RESNETS.OUT_FEATURES == ["res2", "res5"]
    assert v3p.MODEL.SEM_SEG_HEAD.IN_FEATURES == ["res2", "res5"]


def test_every_shipped_config_loads():
    files = sorted(CONFIG_DIR.parent.rglob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        load_config(path)


def test_base_paths_are_relative_to_the_including_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("SOLVER:\n  BASE_LR: 0.5\n  MAX_ITER: 7\n")
    (tmp_path / "sub" / "child.yaml").write_text("_BASE_: ../base.yaml\nSOLVER:\n  MAX_ITER: 9\n")
    cfg = load_config(tmp_path / "sub" / "child.yaml")
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (0.5, 9)


def test_overrides_are_parsed_as_yaml_literals():
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.BASE_LR", "0.02", "INPUT.CROP.SIZE", "(256, 512)"])
    cfg.merge_from_list(["MODEL.RESNETS.OUT_FEATURES", "['res2', 'res5']"])
    assert cfg.SOLVER.BASE_LR == 0.02
    assert tuple(cfg.INPUT.CROP.SIZE) == (256, 512)
    assert cfg.MODEL.RESNETS.OUT_FEATURES == ["res2", "res5"]


def test_unknown_override_key_names_the_closest_valid_key():
    with pytest.raises(
        ConfigError, match=r"MODEL\.RESNET\.DEPTH.*Did you mean 'MODEL\.RESNETS\.DEPTH'"
    ):
        get_cfg().merge_from_list(["MODEL.RESNET.DEPTH", "50"])


def test_an_option_after_the_overrides_says_to_move_it():
    # `atrous evaluate ... MODEL.WEIGHTS w.pth --output out`: argparse leaves "--output" in opts.
    with pytest.raises(ConfigError, match=r"--output comes after the KEY VALUE overrides"):
        get_cfg().merge_from_list(["MODEL.WEIGHTS", "w.pth", "--output", "out"])


def test_unknown_key_in_file_names_file_and_closest_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("SOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(ConfigError) as info:
        get_cfg().merge_from_file(path)
    message = str(info.value)
    assert "SOLVER.BASE_LRR" in message and str(path) in message and "SOLVER.BASE_LR" in message


def test_missing_base_file_names_the_including_file(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: does_not_exist.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"does_not_exist\.yaml.*_BASE_ of .*child\.yaml"):
        get_cfg().merge_from_file(child)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        get_cfg().merge_from_file(tmp_path / "nope.yaml")


def test_wrong_value_type_and_odd_override_count_are_errors():
    with pytest.raises(ConfigError, match=r"MODEL\.RESNETS\.DEPTH"):
        get_cfg().merge_from_list(["MODEL.RESNETS.DEPTH", "fifty"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        get_cfg().merge_from_list(["SOLVER.BASE_LR"])


def test_frozen_config_rejects_changes():
    cfg = get_cfg()
    cfg.freeze()
    with pytest.raises(AttributeError):
        cfg.SOLVER.BASE_LR = 1.0


def test_dump_round_trips_the_resolved_config(tmp_path):
    cfg = load_config(V3PLUS_CONFIG, ["SOLVER.MAX_ITER", "123"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    assert "_BASE_" not in yaml.safe_load(path.read_text())
    again = load_config(path)
    assert again == cfg


def test_an_int_is_accepted_for_a_float_key_in_files_and_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("SOLVER:\n  BASE_LR: 1\n  CLIP_GRADIENTS:\n    CLIP_VALUE: 5\n")
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.SOLVER.BASE_LR == 1.0 and type(cfg.SOLVER.BASE_LR) is float
    assert type(cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE) is float
    cfg.merge_from_list(["SOLVER.BASE_LR", "2", "SOLVER.MOMENTUM", "0"])
    assert cfg.SOLVER.BASE_LR == 2.0 and type(cfg.SOLVER.BASE_LR) is float
    assert type(cfg.SOLVER.MOMENTUM) is float
    # Integers stay integers where an integer is expected.
    cfg.merge_from_list(["SOLVER.MAX_ITER", "10"])
    assert type(cfg.SOLVER.MAX_ITER) is int


def test_a_float_or_bool_for_another_type_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"SOLVER\.MAX_ITER in the command-line overrides must be an int \(like its current "
        r"value 40000\), got 1\.5, a float",
    ):
        get_cfg().merge_from_list(["SOLVER.MAX_ITER", "1.5"])
    with pytest.raises(ConfigError, match=r"SOLVER\.BASE_LR .* got True, a bool"):
        get_cfg().merge_from_list(["SOLVER.BASE_LR", "True"])
    path = tmp_path / "cfg.yaml"
    path.write_text("SOLVER:\n  MAX_ITER: 2.5\n")
    with pytest.raises(ConfigError, match=r"SOLVER\.MAX_ITER in .*cfg\.yaml must be an int"):
        get_cfg().merge_from_file(path)


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_alias_bomb_config_is_refused_in_one_line(tmp_path):
    from tests.helpers import alias_bomb

    cfg = get_cfg()
    with pytest.raises(ConfigError) as info:
        cfg.merge_from_file(_write(tmp_path / "bomb.yaml", alias_bomb("SEED")))
    message = str(info.value)
    assert "bomb.yaml" in message and "aliases" in message and "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("_BASE_: self.yaml\n", "includes itself through _BASE_"),
        ('_BASE_: ""\n', "_BASE_ must be a file name"),
        ("_BASE_: 5\n", "_BASE_ must be a file name"),
        ("_BASE_: [[a.yaml]]\n", "_BASE_ must be a file name"),
    ],
)
def test_bad_base_entries_are_one_line_errors(tmp_path, text, expected):
    path = _write(tmp_path / "self.yaml", text)
    with pytest.raises(ConfigError, match=expected):
        get_cfg().merge_from_file(path)


def test_binary_config_and_huge_values_give_short_messages(tmp_path):
    binary = tmp_path / "model.pth.yaml"
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00" * 100)
    with pytest.raises(ConfigError, match="not a text file"):
        get_cfg().merge_from_file(str(binary))
    # 1.7 KB that stands for 10,000 strings under an integer key.
    inner = '&b [&a ["' + "x" * 1000 + '", "y"]' + ", *a" * 99 + "]"
    text = "SEED: [" + inner + ", *b" * 49 + "]\n"
    with pytest.raises(ConfigError) as info:
        get_cfg().merge_from_file(_write(tmp_path / "big.yaml", text))
    assert "SEED" in str(info.value) and len(str(info.value)) < 1000


def test_a_flag_after_the_overrides_is_named_even_when_the_count_is_odd():
    # `atrous benchmark ... SOLVER.BASE_LR 0.1 --fold-bn`: three items, a flag among them.
    with pytest.raises(ConfigError, match=r"--fold-bn comes after the KEY VALUE overrides"):
        get_cfg().merge_from_list(["SOLVER.BASE_LR", "0.1", "--fold-bn"])
    with pytest.raises(ConfigError, match="odd number of items"):
        get_cfg().merge_from_list(["SOLVER.BASE_LR", "0.1", "SEED"])
