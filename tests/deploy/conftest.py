"""Fixtures for the deploy tests: the small reference model and its input image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import build_reference_model


@pytest.fixture
def reference_model(tiny_cfg, reference_dir) -> torch.nn.Module:
    return build_reference_model(tiny_cfg, reference_dir)


@pytest.fixture(scope="session")
def reference_image(reference_dir) -> torch.Tensor:
    """The reference input, uint8 RGB (3, 128, 256)."""
    image = np.load(reference_dir / "input_128x256.npy")
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()
