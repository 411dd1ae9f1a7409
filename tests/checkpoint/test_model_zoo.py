"""Model-zoo names, config names and detectron2:// URLs resolve as in the original."""

from __future__ import annotations

import pytest

from atrous.checkpoint import CheckpointError, get_checkpoint_url, list_models, resolve_url
from atrous.checkpoint.model_zoo import MODEL_ZOO

V3 = (
    "https://dl.fbaipublicfiles.com/detectron2/DeepLab/Cityscapes-SemanticSegmentation/"
    "deeplab_v3_R_103_os16_mg124_poly_90k_bs16/28041665/model_final_0dff1b.pkl"
)
V3PLUS = (
    "https://dl.fbaipublicfiles.com/detectron2/DeepLab/Cityscapes-SemanticSegmentation/"
    "deeplab_v3_plus_R_103_os16_mg124_poly_90k_bs16/28054032/model_final_a8a355.pkl"
)


def test_published_urls_are_the_seed_readmes(monkeypatch):
    monkeypatch.delenv("ATROUS_MODEL_ZOO_URL", raising=False)
    assert resolve_url(get_checkpoint_url("DeepLabV3_R103")) == V3
    assert resolve_url(get_checkpoint_url("DeepLabV3+_R103")) == V3PLUS
    assert resolve_url(get_checkpoint_url("deeplabv3plus_r103")) == V3PLUS
    assert resolve_url("detectron2://DeepLab/R-103.pkl") == (
        "https://dl.fbaipublicfiles.com/detectron2/DeepLab/R-103.pkl"
    )
    assert get_checkpoint_url("R-103") == "detectron2://DeepLab/R-103.pkl"
    assert get_checkpoint_url("R-101") == "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
    assert set(list_models()) == {"DeepLabV3_R103", "DeepLabV3+_R103", "R-103", "R-101"}


@pytest.mark.parametrize(
    "name",
    [
        "deeplab_v3_plus_R_103_os16_mg124_poly_90k_bs16.yaml",
        "Cityscapes-SemanticSegmentation/deeplab_v3_plus_R_103_os16_mg124_poly_90k_bs16.yaml",
        "configs/Cityscapes-SemanticSegmentation/deeplab_v3_plus_R_103_os16_mg124_poly_90k_bs16",
    ],
)
def test_config_names_map_to_their_weights(name, monkeypatch):
    monkeypatch.delenv("ATROUS_MODEL_ZOO_URL", raising=False)
    assert resolve_url(get_checkpoint_url(name)) == V3PLUS


def test_zoo_configs_exist_in_the_repository(request):
    configs = request.config.rootpath / "configs"
    for entry in MODEL_ZOO.values():
        if entry.config is not None:
            assert (configs / entry.config).is_file(), entry.config


def test_unpublished_and_unknown_names_explain():
    with pytest.raises(CheckpointError, match="No checkpoint was published"):
        get_checkpoint_url("deeplab_v3_plus_R_101_os16_mg124_poly_90k_bs16.yaml")
    with pytest.raises(CheckpointError, match="Known names: DeepLabV3_R103"):
        get_checkpoint_url("DeepLabV4")


def test_base_url_override(monkeypatch):
    monkeypatch.setenv("ATROUS_MODEL_ZOO_URL", "http://127.0.0.1:8000/mirror")
    assert resolve_url("detectron2://DeepLab/R-103.pkl") == (
        "http://127.0.0.1:8000/mirror/DeepLab/R-103.pkl"
    )
    # Full URLs are taken as given.
    assert resolve_url(V3) == V3
