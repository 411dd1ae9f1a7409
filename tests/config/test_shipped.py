"""Configs shipped inside the package: found by name from anywhere, `_BASE_` resolved inside."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from atrous.config import get_cfg, get_config_file, list_config_files, resolve_config_file
from atrous.config.shipped import SHIPPED_CONFIG_DIR

REPO = Path(__file__).resolve().parents[2]
PLUS_R103 = "Cityscapes-SemanticSegmentation/deeplab_v3_plus_R_103_os16_mg124_poly_90k_bs16.yaml"

SEED_CONFIGS = {
    "Cityscapes-SemanticSegmentation/Base-DeepLabV3-OS16-Semantic.yaml",
    "Cityscapes-SemanticSegmentation/deeplab_v3_R_101_os16_mg124_poly_90k_bs16.yaml",
    "Cityscapes-SemanticSegmentation/deeplab_v3_R_103_os16_mg124_poly_90k_bs16.yaml",
    "Cityscapes-SemanticSegmentation/deeplab_v3_plus_R_101_os16_mg124_poly_90k_bs16.yaml",
    PLUS_R103,
    "Synthetic/deeplab_v3_plus_R_50_quickstart.yaml",
}


def test_every_config_of_the_model_zoo_table_and_the_quickstart_is_shipped():
    assert SEED_CONFIGS <= set(list_config_files())


@pytest.mark.parametrize("name", sorted(SEED_CONFIGS))
def test_get_config_file_returns_a_readable_file_that_loads(name):
    path = Path(get_config_file(name))
    assert path.is_absolute() and path.is_file()
    assert path.is_relative_to(SHIPPED_CONFIG_DIR)
    get_cfg().merge_from_file(str(path))


def test_base_chain_resolves_inside_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("Synthetic/deeplab_v3_plus_R_50_quickstart.yaml"))
    # Values from each level of the chain: the quickstart itself, the V3+ file, and the base.
    assert cfg.DATASETS.TRAIN == ("synthetic_sem_seg_train",)
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "DeepLabV3PlusHead"
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR"


@pytest.mark.parametrize("spelling", [PLUS_R103, f"configs/{PLUS_R103}", f"./configs/{PLUS_R103}"])
def test_a_config_file_that_is_not_here_resolves_to_the_shipped_one(
    spelling, tmp_path, monkeypatch, caplog
):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="atrous.config.shipped"):
        resolved = resolve_config_file(spelling)
    assert resolved == get_config_file(PLUS_R103)
    assert [r.getMessage() for r in caplog.records] == [
        f"Config {spelling} is not a file here; using the shipped {resolved}"
    ]
    cfg = get_cfg()
    cfg.merge_from_file(spelling)
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "DeepLabV3PlusHead"


def test_an_existing_file_wins_over_the_shipped_config(tmp_path, monkeypatch):
    own = tmp_path / "configs" / PLUS_R103
    own.parent.mkdir(parents=True)
    own.write_text("SOLVER:\n  MAX_ITER: 7\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_config_file(f"configs/{PLUS_R103}") == f"configs/{PLUS_R103}"
    cfg = get_cfg()
    cfg.merge_from_file(f"configs/{PLUS_R103}")
    assert cfg.SOLVER.MAX_ITER == 7


@pytest.mark.parametrize("name", ["configs/nope.yaml", "../configs/Synthetic/x.yaml", ""])
def test_an_unknown_name_lists_the_shipped_configs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        resolve_config_file(name)
    message = str(info.value)
    assert "does not exist and is not a config shipped with atrous" in message
    for shipped in SEED_CONFIGS:
        assert shipped in message


def test_a_path_escaping_the_package_is_not_a_shipped_config():
    with pytest.raises(FileNotFoundError):
        get_config_file("../config/defaults.py")


def test_the_repository_configs_folder_is_the_shipped_one():
    # The seed's command lines name configs/...; the link keeps one copy of each file.
    assert (REPO / "configs").resolve() == SHIPPED_CONFIG_DIR
