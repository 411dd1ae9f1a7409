"""torchvision's and timm's state-dict layouts -> atrous' module names, by name, as a pure function.

Files in these layouts are what most people already have: ImageNet classifiers
(``resnet50-0676ba61.pth``, ``resnet101-cd907fc2.pth``, timm's ``resnet50.a1_in1k`` safetensors,
``mobilenet_v3_large-8738ca79.pth``) and torchvision's segmentation models
(``deeplabv3_resnet50_coco-cd0a2569.pth``, ...). Their names differ from ours only in spelling:

================================================  ==============================================
torchvision / timm                                atrous
================================================  ==============================================
``conv1.weight``, ``bn1.*``                       ``backbone.stem.conv1.weight``, ``.norm.*``
``layer1.0.conv2.weight``, ``layer1.0.bn2.*``     ``backbone.res2.0.conv2.weight``, ``.norm.*``
``layer1.0.downsample.{0,1}``                     ``backbone.res2.0.shortcut``, ``.norm``
``features.4.block.1.{0,1}``                      ``backbone.features.4.block.1``, ``.norm``
``features.4.block.2.fc1``                        ``backbone.features.4.block.2.fc1``
``classifier.0.convs.1.{0,1}`` (DeepLabHead)      ``sem_seg_head.aspp.convs.1``, ``.norm``
``classifier.0.convs.4.{1,2}`` (image pooling)    ``sem_seg_head.aspp.convs.4.1``, ``.norm``
``classifier.0.project.{0,1}``                    ``sem_seg_head.aspp.project``, ``.norm``
``classifier.{1,2}``, ``classifier.4``            ``sem_seg_head.conv``, ``.norm``; ``.predictor``
================================================  ==============================================

Segmentation files prefix the backbone with ``backbone.`` (``backbone.layer1...`` for ResNets,
``backbone.4.block...`` for MobileNetV3, whose feature extractor drops ``features.``). Whatever has
no counterpart (the ImageNet classifier ``fc`` / ``classifier``, torchvision's auxiliary
``aux_classifier``) keeps its name, so the load report lists it as unused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

__all__ = ["TORCHVISION_LAYOUTS", "convert_torchvision_state_dict", "detect_torchvision_layout"]

T = TypeVar("T")

# Layout name -> (key that identifies it, description for the log).
TORCHVISION_LAYOUTS = {
    "deeplabv3_resnet": "torchvision DeepLabV3 on a ResNet",
    "deeplabv3_mobilenet_v3": "torchvision DeepLabV3 on MobileNetV3",
    "resnet": "torchvision/timm ImageNet ResNet",
    "mobilenet_v3": "torchvision ImageNet MobileNetV3",
}

_NORM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def detect_torchvision_layout(keys: Iterable[str]) -> str | None:
    """Which torchvision/timm layout a state dict's keys are in (`TORCHVISION_LAYOUTS`), or None.

    atrous' own names (``backbone.stem...``, ``backbone.res2...``, ``backbone.features.0.weight``)
    and detectron2's never match.
    """
    keys = set(keys)
    if "backbone.layer1.0.conv1.weight" in keys and "backbone.conv1.weight" in keys:
        return "deeplabv3_resnet"
    if "backbone.0.0.weight" in keys and "backbone.1.block.0.0.weight" in keys:
        return "deeplabv3_mobilenet_v3"
    if "layer1.0.conv1.weight" in keys and "conv1.weight" in keys:
        return "resnet"
    if "features.0.0.weight" in keys and "features.1.block.0.0.weight" in keys:
        return "mobilenet_v3"
    return None


def _resnet_rules(source: str, target: str) -> list[tuple[re.Pattern[str], str]]:
    s, t = re.escape(source), target
    block = rf"^{s}layer(\d)\.(\d+)\."  # layer index, block index
    return [
        (re.compile(rf"^{s}conv1\.weight$"), rf"{t}stem.conv1.weight"),
        (re.compile(rf"^{s}bn1\.{_NORM}$"), rf"{t}stem.conv1.norm.\1"),
        (re.compile(rf"{block}conv(\d)\.weight$"), rf"{t}res@\1.\2.conv\3.weight"),
        (re.compile(rf"{block}bn(\d)\.{_NORM}$"), rf"{t}res@\1.\2.conv\3.norm.\4"),
        (re.compile(rf"{block}downsample\.0\.weight$"), rf"{t}res@\1.\2.shortcut.weight"),
        (re.compile(rf"{block}downsample\.1\.{_NORM}$"), rf"{t}res@\1.\2.shortcut.norm.\3"),
    ]


def _mobilenet_rules(source: str, target: str) -> list[tuple[re.Pattern[str], str]]:
    s, t = re.escape(source), f"{target}features."
    block = rf"^{s}(\d+)\.block\.(\d+)\."  # feature index, layer index inside the block
    return [
        # Conv2dNormActivation = Sequential(conv, norm, activation) -> Conv2d with .norm
        (re.compile(rf"^{s}(\d+)\.0\.weight$"), rf"{t}\1.weight"),
        (re.compile(rf"^{s}(\d+)\.1\.{_NORM}$"), rf"{t}\1.norm.\2"),
        (re.compile(rf"{block}0\.weight$"), rf"{t}\1.block.\2.weight"),
        (re.compile(rf"{block}1\.{_NORM}$"), rf"{t}\1.block.\2.norm.\3"),
        (re.compile(rf"{block}(fc[12])\.(weight|bias)$"), rf"{t}\1.block.\2.\3.\4"),
    ]


def _deeplab_head_rules(target: str) -> list[tuple[re.Pattern[str], str]]:
    t = f"{target}"
    return [
        (re.compile(r"^classifier\.0\.convs\.([0-3])\.0\.weight$"), rf"{t}aspp.convs.\1.weight"),
        (re.compile(rf"^classifier\.0\.convs\.([0-3])\.1\.{_NORM}$"), rf"{t}aspp.convs.\1.norm.\2"),
        (re.compile(r"^classifier\.0\.convs\.4\.1\.weight$"), rf"{t}aspp.convs.4.1.weight"),
        (re.compile(rf"^classifier\.0\.convs\.4\.2\.{_NORM}$"), rf"{t}aspp.convs.4.1.norm.\1"),
        (re.compile(r"^classifier\.0\.project\.0\.weight$"), rf"{t}aspp.project.weight"),
        (re.compile(rf"^classifier\.0\.project\.1\.{_NORM}$"), rf"{t}aspp.project.norm.\1"),
        (re.compile(r"^classifier\.1\.weight$"), rf"{t}conv.weight"),
        (re.compile(rf"^classifier\.2\.{_NORM}$"), rf"{t}conv.norm.\1"),
        (re.compile(r"^classifier\.4\.(weight|bias)$"), rf"{t}predictor.\1"),
    ]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, replacement in rules:
        new, n = pattern.subn(replacement, key)
        if n:
            # torchvision's layerN is detectron2's res(N+1).
            return re.sub(r"res@(\d)", lambda m: f"res{int(m.group(1)) + 1}", new)
    return key


def convert_torchvision_state_dict(
    state: Mapping[str, T], *, layout: str, model_keys: Iterable[str]
) -> dict[str, T]:
    """Rename a torchvision/timm state dict to atrous' module names.

    Args:
        state: the file's weights by name.
        layout: one of `TORCHVISION_LAYOUTS` (see `detect_torchvision_layout`).
        model_keys: the receiving model's state-dict keys: a segmentor's names start with
            ``backbone.`` and ``sem_seg_head.``, a bare backbone's with its own modules.

    Returns:
        The same values under atrous' names; keys without a counterpart (``fc.*``, ImageNet
        ``classifier.*``, ``aux_classifier.*``) keep theirs, in the original order.
    """
    if layout not in TORCHVISION_LAYOUTS:
        raise ValueError(f"Unknown torchvision layout {layout!r}; use one of {TORCHVISION_LAYOUTS}")
    segmentor = any(k.startswith("backbone.") for k in model_keys)
    backbone = "backbone." if segmentor else ""
    head = "sem_seg_head." if segmentor else ""
    if layout == "resnet":
        rules = _resnet_rules("", backbone)
    elif layout == "mobilenet_v3":
        rules = _mobilenet_rules("features.", backbone)
    elif layout == "deeplabv3_resnet":
        rules = _resnet_rules("backbone.", backbone) + _deeplab_head_rules(head)
    else:
        rules = _mobilenet_rules("backbone.", backbone) + _deeplab_head_rules(head)
    return {_rename(key, rules): value for key, value in state.items()}
