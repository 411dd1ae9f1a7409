"""Numerical parity with torchvision's own ResNet / DeepLabV3 / MobileNetV3 on its reference files.

The files (tests/fixtures/torchvision/README.md) come from torchvision 0.28.0's classes at narrow
widths; the config overrides below reach the same architectures.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from atrous.checkpoint import Checkpointer
from atrous.config import get_cfg
from atrous.modeling import build_backbone

from ..conftest import TORCHVISION_REFERENCE_DIR as REF

ATOL = 1e-4

# torchvision's ResNet conventions, at the reference's widths (Bottleneck with expansion 1).
NARROW_RESNET = [
    "MODEL.BACKBONE.NAME", "build_resnet_deeplab_backbone",
    "MODEL.BACKBONE.FREEZE_AT", "0",
    "MODEL.RESNETS.DEPTH", "50",
    "MODEL.RESNETS.STEM_TYPE", "basic",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "64",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "16",
    "MODEL.RESNETS.STRIDE_IN_1X1", "False",
    "MODEL.RESNETS.DILATE_FIRST_BLOCK", "False",
    "MODEL.RESNETS.RES5_MULTI_GRID", "[1, 1, 1]",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
]  # fmt: skip

# torchvision's replace_stride_with_dilation [F,F,F] / [F,F,T] / [F,T,T]
DILATIONS = {"os32": (1, 1), "os16": (1, 2), "os8": (2, 4)}


@pytest.fixture(scope="module")
def reference_input() -> torch.Tensor:
    return torch.from_numpy(np.load(REF / "input.npy"))  # (1, 3, 96, 160), already normalised


@pytest.mark.parametrize("output_stride", list(DILATIONS))
def test_torchvision_resnet_file_loads_by_name_and_gives_torchvision_features(
    output_stride, reference_input
):
    res4, res5 = DILATIONS[output_stride]
    cfg = get_cfg()
    cfg.merge_from_list(
        [*NARROW_RESNET, "MODEL.RESNETS.RES4_DILATION", str(res4),
         "MODEL.RESNETS.RES5_DILATION", str(res5)]
    )  # fmt: skip
    backbone = build_backbone(cfg).eval()
    report = Checkpointer(backbone).load(str(REF / "resnet_classifier.safetensors"))
    assert report.missing == [] and report.shape_mismatched == []
    assert report.unexpected == ["fc.bias", "fc.weight"]  # the ImageNet classifier
    expected = np.load(REF / "resnet_features.npz")
    with torch.no_grad():
        features = backbone(reference_input)
    for name in ("res2", "res3", "res4", "res5"):
        reference = expected[f"{output_stride}_{name}"]
        assert features[name].shape == reference.shape, name
        np.testing.assert_allclose(features[name].numpy(), reference, atol=ATOL, rtol=0)


def test_every_torchvision_resnet_weight_lands_where_its_name_says():
    """The renamed file holds the very tensors of the original names (nothing transposed or
    shuffled between blocks)."""
    cfg = get_cfg()
    cfg.merge_from_list(NARROW_RESNET)
    backbone = build_backbone(cfg)
    Checkpointer(backbone).load(str(REF / "resnet_classifier.safetensors"))
    source = load_file(REF / "resnet_classifier.safetensors")
    ours = backbone.state_dict()
    torch.testing.assert_close(ours["stem.conv1.norm.running_var"], source["bn1.running_var"])
    torch.testing.assert_close(ours["res4.5.conv2.weight"], source["layer3.5.conv2.weight"])
    torch.testing.assert_close(
        ours["res3.0.shortcut.norm.weight"], source["layer2.0.downsample.1.weight"]
    )
