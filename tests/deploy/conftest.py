"""Fixtures for the deploy tests: the small reference model and its input image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from atrous.checkpoint import Checkpointer
from atrous.config import CfgNode
from atrous.modeling import build_model


def build_reference_model(cfg: CfgNode, reference_dir: Path) -> torch.nn.Module:
    """The small V3+ of the reference outputs, with its detectron2 weights, in eval mode."""
    model = build_model(cfg)
    report = Checkpointer(model).load(str(reference_dir / "small_v3plus.pkl"))
    assert not report.missing and not report.shape_mismatched
    return model.eval()


@pytest.fixture
def reference_model(tiny_cfg, reference_dir) -> torch.nn.Module:
    return build_reference_model(tiny_cfg, reference_dir)


@pytest.fixture(scope="session")
def reference_image(reference_dir) -> torch.Tensor:
    """The reference input, uint8 RGB (3, 128, 256)."""
    image = np.load(reference_dir / "input_128x256.npy")
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()
