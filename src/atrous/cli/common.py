"""Pieces shared by the inference commands (`evaluate`, `predict`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_allow_partial_flag", "load_weights"]


def add_allow_partial_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="use MODEL.WEIGHTS even when some model entries are missing from it or have another "
        "shape (they keep their random initialisation)",
    )


def load_weights(model: Any, weights: str, *, allow_partial: bool) -> Any:
    """Load `weights` into `model`; refuse weights that leave part of the model random.

    Results of a model whose head (or any other part) kept its random initialisation are
    meaningless, so missing and shape-mismatched entries are an error unless `allow_partial`.
    Unused checkpoint entries (e.g. an auxiliary head) are harmless and only logged.

    Returns:
        The checkpointer's `LoadReport`.

    Raises:
        CheckpointError: the weights do not cover the model (and not `allow_partial`), or they
            cannot be read.
    """
    from atrous.checkpoint import Checkpointer
    from atrous.checkpoint.errors import CheckpointError

    report = Checkpointer(model).load(weights)
    if allow_partial or not (report.missing or report.shape_mismatched):
        return report
    if report.shape_mismatched:
        key = report.shape_mismatched[0]
        ckpt_shape, model_shape = report.shapes.get(key, ((), ()))
        example = f"{key}: checkpoint {list(ckpt_shape)}, model {list(model_shape)}"
    else:
        example = f"{report.missing[0]} is missing"
    raise CheckpointError(
        f"MODEL.WEIGHTS {weights!r} does not fit this model: {len(report.missing)} entries "
        f"missing and {len(report.shape_mismatched)} of another shape (e.g. {example}).\n"
        "Make the config match the weights (e.g. MODEL.SEM_SEG_HEAD.NUM_CLASSES), or pass "
        "--allow-partial to use them anyway with those parts left random."
    )
