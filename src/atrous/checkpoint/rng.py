"""Capture and restore the random number generators as tensors and plain containers.

Checkpoints are read back with ``torch.load(weights_only=True)``, which admits tensors and plain
Python values only, so the numpy and Python generator states are converted to those.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state"]


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's `random`, numpy's global generator, torch CPU and CUDA.

    Returns:
        A dict of tensors, ints, floats and strings (safe for ``weights_only`` loading).
    """
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    # Querying CUDA state would initialise CUDA in processes that never used it.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured; absent parts are left as they are."""
    if "python" in state:
        py = state["python"]
        internal = tuple(int(v) for v in py["state"].tolist())
        random.setstate((py["version"], internal, py["gauss"]))
    if "numpy" in state:
        npst = state["numpy"]
        keys = npst["keys"].numpy().astype(np.uint32)
        np.random.set_state((npst["name"], keys, npst["pos"], npst["has_gauss"], npst["gauss"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    # A run resumed on a different number of GPUs cannot get the per-device states back.
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
