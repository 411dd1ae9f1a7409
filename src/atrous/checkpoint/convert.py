"""Convert weights between formats: detectron2 ``.pkl`` / ``.pth`` -> ``.safetensors`` / ``.pth``.

Two modes:

* **into a model** (`convert_into_model`): the file is loaded into a built model through
  :class:`~.checkpointer.Checkpointer` (suffix matching, Caffe2 renaming, the load report
  training prints), and the model's ``state_dict()`` is saved. The output has atrous' names and
  exactly the model's keys, so it loads strictly into the same config.
* **as stored** (`convert_as_stored`): a pure change of container; the names stay as the file has
  them, and the hints that say how to read them (``matching_heuristics``, ``__author__``) travel
  along in the output's metadata. Only the weights are kept (no optimizer or scheduler state).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpointer import Checkpointer, LoadReport
from .errors import CheckpointError, CorruptCheckpointError
from .readers import load_checkpoint_file, weight_tensor
from .weights_io import SAFETENSORS_SUFFIX, save_weights

__all__ = ["ConversionResult", "check_output_suffix", "convert_as_stored", "convert_into_model"]

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (SAFETENSORS_SUFFIX, ".pth", ".pt")


@dataclass
class ConversionResult:
    """What a conversion wrote.

    Attributes:
        output: the written file.
        num_tensors: tensors in it.
        report: the load report (into-model conversions only).
        skipped: entries of the input that are not arrays and were left out (as-stored only).
    """

    output: Path
    num_tensors: int
    report: LoadReport | None = None
    skipped: list[str] = field(default_factory=list)


def check_output_suffix(output: str | os.PathLike[str]) -> None:
    """Raise ValueError unless `output` names a format `save_weights` writes."""
    if not os.fspath(output).endswith(OUTPUT_SUFFIXES):
        raise ValueError(
            f"{os.fspath(output)}: the output format comes from its suffix; use one of "
            f"{', '.join(OUTPUT_SUFFIXES)}"
        )


def convert_into_model(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: nn.Module,
    *,
    strict: bool = False,
) -> ConversionResult:
    """Load `source` into `model` (logging the load report) and save the model's weights.

    Args:
        source: path, URL or model-zoo name, anything :meth:`Checkpointer.load` takes.
        output: ``.safetensors`` or ``.pth`` file to write.
        model: the built model the weights are for (its state is replaced).
        strict: write nothing unless every model key was loaded and every file key used.

    Raises:
        ValueError: `output` has an unknown suffix.
        CheckpointError: the file cannot be read, or `strict` and it does not fit.
    """
    check_output_suffix(output)
    report = Checkpointer(model).load(source, checkpointables=[], strict=strict)
    left = len(report.missing) + len(report.shape_mismatched) + len(report.reinitialised)
    if left:
        logger.warning(
            "%d model entries got nothing from %s; %s holds the model's initialisation for them.",
            left,
            report.path,
            output,
        )
    state = model.state_dict()
    path = save_weights(
        output, state, metadata={"converted_from": os.path.basename(report.path or source)}
    )
    return ConversionResult(output=path, num_tensors=len(state), report=report)


def convert_as_stored(
    source: str | os.PathLike[str], output: str | os.PathLike[str]
) -> ConversionResult:
    """Re-save the weights of a local file in another format, names unchanged.

    Args:
        source: a local ``.pkl``, torch or safetensors file.
        output: ``.safetensors`` or ``.pth`` file to write.

    Raises:
        ValueError: `output` has an unknown suffix.
        CheckpointError: the file cannot be read, or holds no arrays at all.
    """
    check_output_suffix(output)
    checkpoint = load_checkpoint_file(source)
    raw = checkpoint.get("model")
    if not isinstance(raw, dict):
        raise CorruptCheckpointError(
            f"{source}: the 'model' entry is a {type(raw).__name__}, not a dict of weights."
        )
    tensors, skipped = {}, []
    for key, value in raw.items():
        # Entries that are not arrays (a note, a counter) have no place in a weights file; they
        # are reported as skipped rather than refused, as a model load would.
        if isinstance(value, torch.Tensor | np.ndarray | np.generic):
            tensors[str(key)] = weight_tensor(value, str(key), os.fspath(source))
        else:
            skipped.append(str(key))
    if not tensors:
        raise CheckpointError(f"{source} holds no arrays to convert.")
    if skipped:
        logger.warning("%s: %d entries are not arrays and were left out", source, len(skipped))
    metadata = {"converted_from": os.path.basename(os.fspath(source))}
    if checkpoint.get("matching_heuristics"):
        metadata["matching_heuristics"] = "True"
    if isinstance(checkpoint.get("__author__"), str):
        metadata["__author__"] = checkpoint["__author__"]
    path = save_weights(output, tensors, metadata=metadata)
    logger.info("%s: %d tensors, names as stored (no model to match them to)", path, len(tensors))
    return ConversionResult(output=path, num_tensors=len(tensors), skipped=skipped)
