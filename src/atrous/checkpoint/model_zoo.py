"""Names and URLs of the published DeepLab checkpoints and ImageNet backbones.

``detectron2://X`` is detectron2's spelling of ``https://dl.fbaipublicfiles.com/detectron2/X``
and is resolved the same way here. The host can be replaced by a mirror (or a local server in
tests) with the environment variable ``ATROUS_MODEL_ZOO_URL``; likewise torchvision's
``https://download.pytorch.org/models/`` with ``ATROUS_TORCHVISION_URL`` and the Hugging Face hub
``https://huggingface.co/`` with ``ATROUS_HF_URL``. Cached files keep the original URL's place
whichever mirror served them.

Known names (case-insensitive):

detectron2 (``detectron2://``):

- ``DeepLabV3_R103``: DeepLabV3, R103-DC5, Cityscapes, 78.5 mIoU (model id 28041665)
- ``DeepLabV3+_R103`` (also ``DeepLabV3Plus_R103``): DeepLabV3+, R103-DC5, Cityscapes, 80.0 mIoU
  (model id 28054032)
- ``R-103``: ImageNet R-103 backbone (deeplab stem), used by the R103 configs
- ``R-101``: ImageNet MSRA R-101 backbone (Caffe2 names), used by the R101 configs

torchvision (``https://download.pytorch.org/models/``) and timm (the Hugging Face hub):

- ``torchvision/deeplabv3_resnet50``, ``torchvision/deeplabv3_resnet101``,
  ``torchvision/deeplabv3_mobilenet_v3_large``: torchvision's DeepLabV3 models, COCO images with
  the 21 VOC classes, 66.4 / 67.4 / 60.3 mIoU; the ``configs/torchvision/`` configs
- ``torchvision/resnet50``, ``torchvision/resnet101``, ``torchvision/mobilenet_v3_large``: the
  ImageNet classifiers (V1 weights, those torchvision's DeepLabV3 models started from), and their
  ``_v2`` weights
- ``timm/resnet50.a1_in1k``: timm's ResNet-50 trained with the "ResNet strikes back" A1 recipe,
  in safetensors

torchvision's files carry the first digits of their SHA-256 after the last hyphen
(``resnet101-cd907fc2.pth``), which the download verifies as for detectron2's names.

The shipped config files map to their published weights too, e.g.
``get_checkpoint_url("Cityscapes-SemanticSegmentation/deeplab_v3_plus_R_103_os16_mg124_poly_90k_bs16.yaml")``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import CheckpointError

__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_BASE_URL",
    "MIRRORS",
    "MODEL_ZOO",
    "PREFIX",
    "ZooEntry",
    "base_url",
    "get_checkpoint_url",
    "list_models",
    "lookup",
    "resolve_url",
    "sha256_of",
]

PREFIX = "detectron2://"
DEFAULT_BASE_URL = "https://dl.fbaipublicfiles.com/detectron2/"
ENV_BASE_URL = "ATROUS_MODEL_ZOO_URL"

_CITYSCAPES = "Cityscapes-SemanticSegmentation"
TORCHVISION_URL = "https://download.pytorch.org/models/"
HF_URL = "https://huggingface.co/"
# Published host -> environment variable naming a mirror of it.
MIRRORS = {TORCHVISION_URL: "ATROUS_TORCHVISION_URL", HF_URL: "ATROUS_HF_URL"}


@dataclass(frozen=True)
class ZooEntry:
    """One published file.

    Attributes:
        name: the short name.
        url: ``detectron2://`` or ``https://`` URL of the file.
        description: one line for listings.
        config: the config (relative to ``configs/``) the weights were trained with, if any.
        sha256: the file's whole SHA-256 where known (the download verifies it).
    """

    name: str
    url: str
    description: str
    config: str | None = None
    sha256: str | None = None


def _torchvision(
    name: str, file: str, description: str, config: str | None = None, sha256: str | None = None
) -> ZooEntry:
    return ZooEntry(f"torchvision/{name}", TORCHVISION_URL + file, description, config, sha256)


MODEL_ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            name="DeepLabV3_R103",
            url=f"{PREFIX}DeepLab/{_CITYSCAPES}/deeplab_v3_R_103_os16_mg124_poly_90k_bs16/"
            "28041665/model_final_0dff1b.pkl",
            description="DeepLabV3 R103-DC5, Cityscapes fine, 78.5 mIoU",
            config=f"{_CITYSCAPES}/deeplab_v3_R_103_os16_mg124_poly_90k_bs16.yaml",
        ),
        ZooEntry(
            name="DeepLabV3+_R103",
            url=f"{PREFIX}DeepLab/{_CITYSCAPES}/deeplab_v3_plus_R_103_os16_mg124_poly_90k_bs16/"
            "28054032/model_final_a8a355.pkl",
            description="DeepLabV3+ R103-DC5, Cityscapes fine, 80.0 mIoU",
            config=f"{_CITYSCAPES}/deeplab_v3_plus_R_103_os16_mg124_poly_90k_bs16.yaml",
        ),
        ZooEntry(
            name="R-103",
            url=f"{PREFIX}DeepLab/R-103.pkl",
            description="ImageNet-pretrained R-103 backbone (deeplab stem)",
        ),
        ZooEntry(
            name="R-101",
            url=f"{PREFIX}ImageNetPretrained/MSRA/R-101.pkl",
            description="ImageNet-pretrained MSRA R-101 backbone (Caffe2 format)",
        ),
        _torchvision(
            "deeplabv3_resnet50",
            "deeplabv3_resnet50_coco-cd0a2569.pth",
            "torchvision DeepLabV3 ResNet-50, COCO with the 21 VOC classes, 66.4 mIoU",
            "torchvision/deeplabv3_resnet50.yaml",
            "cd0a25694c4a0f7106b38f4938bf90a874f2f241cc410b8f63c7024399538f06",
        ),
        _torchvision(
            "deeplabv3_resnet101",
            "deeplabv3_resnet101_coco-586e9e4e.pth",
            "torchvision DeepLabV3 ResNet-101, COCO with the 21 VOC classes, 67.4 mIoU",
            "torchvision/deeplabv3_resnet101.yaml",
            "586e9e4e203fcbf17e1ad45533d8d33ab133fc762bf03101c5dd743995c08c0d",
        ),
        _torchvision(
            "deeplabv3_mobilenet_v3_large",
            "deeplabv3_mobilenet_v3_large-fc3c493d.pth",
            "torchvision DeepLabV3 MobileNetV3-Large, COCO with the 21 VOC classes, 60.3 mIoU",
            "torchvision/deeplabv3_mobilenet_v3_large.yaml",
            "fc3c493d68e89cc31ef488c803d5d7dd2f3190fb570598faa49fef69be8e5e70",
        ),
        _torchvision(
            "resnet50", "resnet50-0676ba61.pth", "torchvision ImageNet ResNet-50 V1, 76.1 top-1"
        ),
        _torchvision(
            "resnet50_v2", "resnet50-11ad3fa6.pth", "torchvision ImageNet ResNet-50 V2, 80.9 top-1"
        ),
        _torchvision(
            "resnet101", "resnet101-63fe2227.pth", "torchvision ImageNet ResNet-101 V1, 77.4 top-1"
        ),
        _torchvision(
            "resnet101_v2",
            "resnet101-cd907fc2.pth",
            "torchvision ImageNet ResNet-101 V2, 81.9 top-1",
        ),
        _torchvision(
            "mobilenet_v3_large",
            "mobilenet_v3_large-8738ca79.pth",
            "torchvision ImageNet MobileNetV3-Large V1, 74.0 top-1",
        ),
        _torchvision(
            "mobilenet_v3_large_v2",
            "mobilenet_v3_large-5c1a4163.pth",
            "torchvision ImageNet MobileNetV3-Large V2, 75.3 top-1",
        ),
        ZooEntry(
            name="timm/resnet50.a1_in1k",
            url=f"{HF_URL}timm/resnet50.a1_in1k/resolve/main/model.safetensors",
            description="timm ImageNet ResNet-50 (ResNet strikes back A1), 81.2 top-1 at 288",
        ),
    )
}

_ALIASES = {"deeplabv3plus_r103": "DeepLabV3+_R103"}

# Configs whose row in the seed's model-zoo table has no published checkpoint.
_UNPUBLISHED_CONFIGS = {
    "deeplab_v3_R_101_os16_mg124_poly_90k_bs16",
    "deeplab_v3_plus_R_101_os16_mg124_poly_90k_bs16",
}


def list_models() -> list[str]:
    """The short names accepted by :func:`get_checkpoint_url` and ``Checkpointer.load``."""
    return list(MODEL_ZOO)


def base_url() -> str:
    """The URL that ``detectron2://`` stands for (``$ATROUS_MODEL_ZOO_URL`` overrides it)."""
    url = os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    return url if url.endswith("/") else url + "/"


def resolve_url(url: str) -> str:
    """Turn ``detectron2://X`` into an ``https://`` URL, and torchvision's and the Hugging Face
    hub's URLs into their mirror's where one is set (`MIRRORS`); others are returned unchanged."""
    if url.startswith(PREFIX):
        return base_url() + url[len(PREFIX) :]
    for host, variable in MIRRORS.items():
        mirror = os.environ.get(variable)
        if mirror and url.startswith(host):
            return (mirror if mirror.endswith("/") else mirror + "/") + url[len(host) :]
    return url


def sha256_of(url: str) -> str | None:
    """The whole SHA-256 of a model-zoo file, by its URL, where the zoo knows it."""
    for entry in MODEL_ZOO.values():
        if entry.url == url:
            return entry.sha256
    return None


def _config_stem(name: str) -> str | None:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    for ext in (".yaml", ".yml"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base if base.startswith("deeplab_") else None


def lookup(name: str) -> str | None:
    """The ``detectron2://`` URL for a short name or a config file name, else ``None``.

    Args:
        name: e.g. ``"DeepLabV3+_R103"``, ``"deeplab_v3_R_103_os16_mg124_poly_90k_bs16.yaml"``
            or ``"configs/Cityscapes-SemanticSegmentation/<that>.yaml"``.
    """
    key = name.strip()
    for entry_name, entry in MODEL_ZOO.items():
        if key.lower() == entry_name.lower():
            return entry.url
    if key.lower() in _ALIASES:
        return MODEL_ZOO[_ALIASES[key.lower()]].url
    stem = _config_stem(key)
    if stem is not None:
        for entry in MODEL_ZOO.values():
            if entry.config is not None and _config_stem(entry.config) == stem:
                return entry.url
    return None


def get_checkpoint_url(name: str) -> str:
    """The ``detectron2://`` URL of a short name or config file's published weights.

    Raises:
        CheckpointError: unknown name, or a config with no published checkpoint.
    """
    url = lookup(name)
    if url is not None:
        return url
    if _config_stem(name) in _UNPUBLISHED_CONFIGS:
        raise CheckpointError(
            f"No checkpoint was published for {name} (the model-zoo table lists its mIoU "
            "without a model). Train it with `atrous train`, or use DeepLabV3_R103 / "
            "DeepLabV3+_R103."
        )
    raise CheckpointError(
        f"Unknown model-zoo name {name!r}. Known names: {', '.join(list_models())}; config "
        "file names of the published models work too."
    )
