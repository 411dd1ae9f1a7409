"""Names and URLs of the published DeepLab checkpoints and ImageNet backbones.

``detectron2://X`` is detectron2's spelling of ``https://dl.fbaipublicfiles.com/detectron2/X``
and is resolved the same way here. The host can be replaced by a mirror (or a local server in
tests) with the environment variable ``ATROUS_MODEL_ZOO_URL``.

Known names (case-insensitive):

=====================  ===================================================================
``DeepLabV3_R103``     DeepLabV3, R103-DC5, Cityscapes, 78.5 mIoU (model id 28041665)
``DeepLabV3+_R103``    DeepLabV3+, R103-DC5, Cityscapes, 80.0 mIoU (model id 28054032);
                       also ``DeepLabV3Plus_R103``
``R-103``              ImageNet R-103 backbone (deeplab stem), used by the R103 configs
``R-101``              ImageNet MSRA R-101 backbone (Caffe2 names), used by the R101 configs
=====================  ===================================================================

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
    "MODEL_ZOO",
    "PREFIX",
    "ZooEntry",
    "base_url",
    "get_checkpoint_url",
    "list_models",
    "lookup",
    "resolve_url",
]

PREFIX = "detectron2://"
DEFAULT_BASE_URL = "https://dl.fbaipublicfiles.com/detectron2/"
ENV_BASE_URL = "ATROUS_MODEL_ZOO_URL"

_CITYSCAPES = "Cityscapes-SemanticSegmentation"


@dataclass(frozen=True)
class ZooEntry:
    """One published file.

    Attributes:
        name: the short name.
        url: ``detectron2://`` URL of the file.
        description: one line for listings.
        config: the config (relative to ``configs/``) the weights were trained with, if any.
    """

    name: str
    url: str
    description: str
    config: str | None = None


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
    """Turn ``detectron2://X`` into an ``https://`` URL; other URLs are returned unchanged."""
    if url.startswith(PREFIX):
        return base_url() + url[len(PREFIX) :]
    return url


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
