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
    detectron2 = {n for n in list_models() if "/" not in n}
    assert detectron2 == {"DeepLabV3_R103", "DeepLabV3+_R103", "R-103", "R-101"}


TORCHVISION = "https://download.pytorch.org/models/"


def test_torchvision_and_timm_names_are_their_public_urls(monkeypatch):
    monkeypatch.delenv("ATROUS_TORCHVISION_URL", raising=False)
    monkeypatch.delenv("ATROUS_HF_URL", raising=False)
    expected = {
        "torchvision/deeplabv3_resnet50": "deeplabv3_resnet50_coco-cd0a2569.pth",
        "torchvision/deeplabv3_resnet101": "deeplabv3_resnet101_coco-586e9e4e.pth",
        "torchvision/deeplabv3_mobilenet_v3_large": "deeplabv3_mobilenet_v3_large-fc3c493d.pth",
        "torchvision/resnet50": "resnet50-0676ba61.pth",
        "torchvision/resnet50_v2": "resnet50-11ad3fa6.pth",
        "torchvision/resnet101": "resnet101-63fe2227.pth",
        "torchvision/resnet101_v2": "resnet101-cd907fc2.pth",
        "torchvision/mobilenet_v3_large": "mobilenet_v3_large-8738ca79.pth",
        "torchvision/mobilenet_v3_large_v2": "mobilenet_v3_large-5c1a4163.pth",
    }
    for name, file in expected.items():
        assert resolve_url(get_checkpoint_url(name)) == TORCHVISION + file
        entry = MODEL_ZOO[name]
        # a whole recorded SHA-256 agrees with the prefix in the name
        assert entry.sha256 is None or entry.sha256.startswith(file.rsplit("-", 1)[1][:8])
    assert resolve_url(get_checkpoint_url("timm/resnet50.a1_in1k")) == (
        "https://huggingface.co/timm/resnet50.a1_in1k/resolve/main/model.safetensors"
    )
    # the shipped torchvision configs name their published weights
    assert (
        get_checkpoint_url("torchvision/deeplabv3_resnet101.yaml")
        == MODEL_ZOO["torchvision/deeplabv3_resnet101"].url
    )


def test_torchvision_and_hub_mirrors(monkeypatch):
    monkeypatch.setenv("ATROUS_TORCHVISION_URL", "http://mirror/tv")
    monkeypatch.setenv("ATROUS_HF_URL", "http://mirror/hf/")
    assert (
        resolve_url(TORCHVISION + "resnet50-0676ba61.pth")
        == "http://mirror/tv/resnet50-0676ba61.pth"
    )
    assert resolve_url("https://huggingface.co/timm/x/resolve/main/model.safetensors") == (
        "http://mirror/hf/timm/x/resolve/main/model.safetensors"
    )


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
