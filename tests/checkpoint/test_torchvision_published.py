"""Every key of torchvision's six published files lands, with its shape, in a shipped config.

The names and shapes come from torchvision 0.28.0's own builders
(tests/fixtures/torchvision/published_state_dicts.txt): ``resnet50``, ``resnet101``,
``mobilenet_v3_large`` (ImageNet classifiers) and ``deeplabv3_resnet50``, ``deeplabv3_resnet101``,
``deeplabv3_mobilenet_v3_large`` (with their auxiliary heads, as published).
"""

from __future__ import annotations

import re

import pytest
import torch

from atrous.checkpoint.torchvision import (
    convert_torchvision_state_dict,
    detect_torchvision_layout,
)
from atrous.config import get_cfg
from atrous.modeling import build_model
from tests.helpers import REPO_ROOT, TORCHVISION_REFERENCE_DIR

# published model -> (shipped config it initialises, keys that have no place in it)
PUBLISHED = {
    "resnet50": ("torchvision/deeplabv3_resnet50", r"fc\."),
    "resnet101": ("torchvision/deeplabv3_resnet101", r"fc\."),
    "mobilenet_v3_large": ("torchvision/deeplabv3_mobilenet_v3_large", r"classifier\.[03]\."),
    "deeplabv3_resnet50 (aux)": ("torchvision/deeplabv3_resnet50", r"aux_classifier\."),
    "deeplabv3_resnet101 (aux)": ("torchvision/deeplabv3_resnet101", r"aux_classifier\."),
    "deeplabv3_mobilenet_v3_large (aux)": (
        "torchvision/deeplabv3_mobilenet_v3_large",
        r"aux_classifier\.",
    ),
}
# The own-data configs start from the ImageNet files.
CUSTOM = {
    "resnet50": ("Custom/deeplab_v3_plus_R_50_gpu", r"fc\."),
    "mobilenet_v3_large": ("Custom/deeplab_v3_plus_mobilenet_v3_large_cpu", r"classifier\.[03]\."),
}


def _published() -> dict[str, dict[str, tuple[int, ...]]]:
    models: dict[str, dict[str, tuple[int, ...]]] = {}
    current = None
    text = (TORCHVISION_REFERENCE_DIR / "published_state_dicts.txt").read_text()
    for line in text.splitlines():
        if line.startswith("## "):
            name, _, count = line[3:].rpartition(": ")
            current = models[name] = {}
            expected_count = int(count.split()[0])
            continue
        key, _, shape = line.partition(" ")
        current[key] = tuple(int(v) for v in re.findall(r"\d+", shape))
        assert len(current) <= expected_count
    return models


PUBLISHED_KEYS = _published()


def test_the_fixture_lists_the_six_models():
    assert list(PUBLISHED_KEYS) == list(PUBLISHED)
    assert [len(v) for v in PUBLISHED_KEYS.values()] == [320, 626, 312, 370, 676, 360]


_MODELS: dict[str, dict[str, tuple[int, ...]]] = {}


def _shipped_state_shapes(config: str) -> dict[str, tuple[int, ...]]:
    if config not in _MODELS:
        cfg = get_cfg()
        cfg.merge_from_file(str(REPO_ROOT / "configs" / f"{config}.yaml"))
        cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
        model = build_model(cfg)
        _MODELS[config] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _MODELS[config]


@pytest.mark.slow
@pytest.mark.parametrize(
    "published, config, unused",
    [(name, *PUBLISHED[name]) for name in PUBLISHED] + [(name, *CUSTOM[name]) for name in CUSTOM],
)
def test_every_published_key_maps_with_its_shape(published, config, unused):
    source = PUBLISHED_KEYS[published]
    ours = _shipped_state_shapes(config)
    layout = detect_torchvision_layout(source)
    assert layout is not None
    renamed = convert_torchvision_state_dict(
        dict(zip(source, source.values())), layout=layout, model_keys=ours
    )
    assert len(renamed) == len(source)  # no two keys collapse into one
    left_over = {k for k in renamed if k not in ours}
    assert all(re.match(unused, k) for k in left_over), sorted(left_over)[:10]
    assert left_over == {k for k in source if re.match(unused, k)}
    wrong_shape = {k: (s, ours[k]) for k, s in renamed.items() if k in ours and s != ours[k]}
    assert wrong_shape == {}
    missing = sorted(k for k in ours if k not in renamed)
    if published.startswith("deeplabv3"):
        assert missing == []  # the whole model comes from the file
    else:
        # an ImageNet file gives the whole backbone; the head starts from its initialisation
        assert missing and all(k.startswith("sem_seg_head.") for k in missing)
        assert {k for k in ours if k.startswith("backbone.")} <= set(renamed)


def _structure(model: torch.nn.Module) -> list[tuple]:
    """The module tree without widths: names, types, kernel geometry, depthwise or not."""
    rows = []
    for name, module in model.named_modules():
        row: tuple = (name, type(module).__name__)
        if isinstance(module, torch.nn.Conv2d):
            depthwise = module.groups == module.in_channels and module.groups > 1
            row += (module.kernel_size, module.stride, module.padding, module.dilation, depthwise)
        rows.append(row)
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("config", ["deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large"])
def test_narrow_parity_configs_build_the_shipped_tree_apart_from_widths(config):
    from ..modeling.test_torchvision_parity import narrow_torchvision_config

    narrow = build_model(narrow_torchvision_config(config))
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "torchvision" / f"{config}.yaml"))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    full = build_model(cfg)
    narrow_rows, full_rows = _structure(narrow), _structure(full)
    if config == "deeplabv3_resnet50":
        # The one difference widths make: res2's first block keeps its 64 channels at the
        # reference's widths, so it needs no projection shortcut (nor does torchvision's).
        extra = [r for r in full_rows if r[0].startswith("backbone.res2.0.shortcut")]
        assert [r[0] for r in extra] == [
            "backbone.res2.0.shortcut",
            "backbone.res2.0.shortcut.norm",
        ]
        full_rows = [r for r in full_rows if r not in extra]
    assert narrow_rows == full_rows
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters())
