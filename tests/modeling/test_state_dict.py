"""The full R103 models have exactly detectron2's state dict, so model-zoo files load unchanged."""

from __future__ import annotations

import json

import pytest

from atrous.layers import ImagePooling, NaiveSyncBatchNorm
from atrous.modeling import build_model
from tests.helpers import CONFIG_DIR, V3_CONFIG, V3PLUS_CONFIG, load_config


def _listing(model) -> list[str]:
    return [
        f"{name}\t{tuple(t.shape)}\t{str(t.dtype).replace('torch.', '')}"
        for name, t in model.state_dict().items()
    ]


@pytest.mark.parametrize(
    ("config", "listing", "key"),
    [
        (V3_CONFIG, "state_dict_v3_R103.txt", "v3_R103"),
        (V3PLUS_CONFIG, "state_dict_v3plus_R103.txt", "v3plus_R103"),
    ],
)
def test_r103_state_dict_equals_detectron2_entry_for_entry(reference_dir, config, listing, key):
    model = build_model(load_config(config))
    expected = (reference_dir / listing).read_text().splitlines()
    assert _listing(model) == expected

    counts = json.loads((reference_dir / "param_counts.json").read_text())[key]
    params = list(model.parameters())
    assert sum(p.numel() for p in params) == counts["num_parameters"]
    assert sum(p.numel() for p in params if p.requires_grad) == counts["num_trainable_parameters"]
    assert len(params) == counts["num_param_tensors"]
    # All buffers, pixel_mean and pixel_std included (they are not in the state dict).
    assert sum(b.numel() for b in model.buffers()) == counts["num_buffer_elements"]
    assert sum(t.numel() for t in model.state_dict().values()) == counts["num_state_dict_elements"]
    shapes = {k: (v.channels, v.stride) for k, v in model.backbone.output_shape().items()}
    assert shapes == {
        k: (v["channels"], v["stride"]) for k, v in counts["backbone_output_shape"].items()
    }
    assert model.backbone.size_divisibility == counts["backbone_size_divisibility"]

    pools = [m for m in model.modules() if isinstance(m, ImagePooling)]
    assert len(pools) == 1 and pools[0].kernel_size == (32, 64)
    assert counts["aspp_pool"] == "AvgPool2d(kernel_size=(32, 64), stride=1, padding=0)"
    assert all(
        isinstance(m, NaiveSyncBatchNorm)
        for name, m in model.named_modules()
        if name.endswith(".norm")
    )


@pytest.mark.parametrize("name", ["deeplab_v3_R_101", "deeplab_v3_plus_R_101"])
def test_r101_dc5_configs_build_a_basic_stem_resnet101(name):
    cfg = load_config(CONFIG_DIR / f"{name}_os16_mg124_poly_90k_bs16.yaml")
    model = build_model(cfg)
    state = model.state_dict()
    assert state["backbone.stem.conv1.weight"].shape == (64, 3, 7, 7)
    assert "backbone.stem.conv2.weight" not in state
    assert (
        len([k for k in state if k.startswith("backbone.res4.") and k.endswith("conv1.weight")])
        == 23
    )
    # MSRA ImageNet weights put the stride in the 1x1 conv.
    assert model.backbone.res3[0].conv1.stride == (2, 2)
    assert model.backbone.res3[0].conv2.stride == (1, 1)
