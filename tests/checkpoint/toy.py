"""A toy model with detectron2's state-dict names, and helpers to write model-zoo files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn


class ConvNorm(nn.Module):
    """detectron2's Conv2d-with-norm naming: ``<name>.weight`` and ``<name>.norm.*``."""

    def __init__(self, cin: int, cout: int, norm: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.norm = norm(cout)


class ToySegmentor(nn.Module):
    """State-dict names shaped like the segmentor's: backbone.stem/res2, sem_seg_head.*."""

    def __init__(self, num_classes: int = 3, norm: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.stem = nn.Module()
        self.backbone.stem.conv1 = ConvNorm(3, 4, norm)
        self.backbone.res2 = nn.ModuleList([nn.Module()])
        self.backbone.res2[0].conv1 = ConvNorm(4, 4, norm)
        self.backbone.res2[0].shortcut = ConvNorm(4, 4, norm)
        self.sem_seg_head = nn.Module()
        self.sem_seg_head.predictor = nn.Conv2d(4, num_classes, 1)
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.ones(3, 1, 1), persistent=False)


def d2_pickle(path: Path, weights: dict[str, np.ndarray], **meta) -> Path:
    """Write `weights` in detectron2's model-zoo .pkl format (protocol 2, like the zoo files)."""
    data = {"model": weights, "__author__": "test", "matching_heuristics": True, **meta}
    path.write_bytes(pickle.dumps(data, protocol=2))
    return path


def numpy_state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
