"""The segmentor's output budget: refused before the backbone runs, never in the default path."""

from __future__ import annotations

import pytest
import torch

from atrous.config import get_cfg
from atrous.modeling import OutputTooLargeError, build_model, check_output_size, max_output_bytes


def test_output_budget_admits_cityscapes_and_refuses_a_huge_image():
    budget = max_output_bytes(get_cfg())
    assert budget == 4096 * 2**20
    # the original's evaluation size, and a 4x larger one, stay as they are
    check_output_size(num_classes=19, height=1024, width=2048, max_bytes=budget)
    check_output_size(num_classes=19, height=2048, width=4096, max_bytes=budget)
    with pytest.raises(OutputTooLargeError) as info:
        check_output_size(
            num_classes=19, height=8000, width=8000, max_bytes=budget, name="aerial.png"
        )
    assert str(info.value).startswith(
        "aerial.png: its prediction at 8000x8000 (HxW) with 19 classes would take 4,639 MiB"
    )
    assert "TEST.MAX_OUTPUT_MB (4,096 MiB)" in str(info.value)
    check_output_size(num_classes=19, height=8000, width=8000, max_bytes=0)  # 0: no limit
    check_output_size(num_classes=2, height=4, width=8, max_bytes=256)  # exactly 256 bytes
    with pytest.raises(OutputTooLargeError):
        check_output_size(num_classes=2, height=4, width=8, max_bytes=255)


def test_segmentor_refuses_before_running_the_backbone(tiny_cfg):
    tiny_cfg.merge_from_list(["TEST.MAX_OUTPUT_MB", "1"])  # 19 x 96 x 128 x 4 bytes = 0.89 MiB
    model = build_model(tiny_cfg).eval()
    calls = []
    model.backbone.register_forward_hook(lambda *args: calls.append(1))
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "height": 96, "width": 128}])
        assert out[0]["sem_seg"].shape == (19, 96, 128) and calls == [1]
        big = {"image": image, "height": 128, "width": 192, "file_name": "big.png"}
        with pytest.raises(OutputTooLargeError, match=r"^big\.png: .* 128x192 \(HxW\)"):
            model([big])
        assert calls == [1]  # refused before any computation
    # training never returns full-size logits: no limit applies
    model.train()
    label = torch.zeros(128, 192, dtype=torch.int64)
    loss = model([{"image": torch.zeros(3, 128, 192, dtype=torch.uint8), "sem_seg": label}])
    assert torch.isfinite(loss["loss_sem_seg"])
