"""A tiny DeepLabV3+ with the reference's non-trivial random weights (logits far from uniform)."""

from __future__ import annotations

import pytest

from atrous.checkpoint import Checkpointer
from atrous.modeling import build_model


@pytest.fixture
def model(tiny_cfg, reference_dir):
    net = build_model(tiny_cfg)
    report = Checkpointer(net).load(str(reference_dir / "small_v3plus.pkl"))
    assert not report.missing
    return net.eval()
