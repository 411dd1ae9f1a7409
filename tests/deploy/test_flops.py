"""FLOP counting with PyTorch's counter, on a meta-device copy of the model."""

from __future__ import annotations

import torch

from atrous.deploy.flops import count_flops, count_model_flops
from atrous.modeling import build_model


def test_convolution_counts_two_flops_per_multiply_add():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 16, 16)
    assert count_flops(lambda: conv(x)) == 2 * (2 * 16 * 16) * 8 * (3 * 3 * 3)


def test_model_count_uses_no_memory_and_leaves_the_model_alone(tiny_cfg):
    model = build_model(tiny_cfg)
    inputs = [
        {
            "image": torch.zeros(3, 64, 128, dtype=torch.uint8),
            "sem_seg": torch.zeros(64, 128, dtype=torch.long),
        }
    ]
    infer = count_model_flops(model, inputs)
    train = count_model_flops(model, inputs, train=True)
    assert infer > 0 and 2.5 * infer < train < 3.5 * infer
    assert next(model.parameters()).device.type == "cpu" and model.training
