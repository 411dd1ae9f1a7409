"""Map a foreign (detectron2 / Caffe2 model-zoo) state dict onto a model's names.

This is detectron2's ``align_and_update_state_dicts`` as a pure function: it never touches a
module, it takes the model's state dict (for names and shapes) and the checkpoint's, and returns
the checkpoint re-keyed by model names together with a :class:`MatchReport`.

Matching rule (identical to detectron2): a checkpoint key ``b`` matches a model key ``a`` when
``a == b or a.endswith("." + b)``; among several matches the longest ``b`` wins. That is how a
backbone-only file such as ``R-103.pkl`` (``res2.0.conv1.weight``) loads into a full model
(``backbone.res2.0.conv1.weight``). Matches whose shapes differ are skipped with a warning; one
checkpoint key that would fill two model keys is an error, because which one was meant is unknown.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MatchReport", "align_and_update_state_dicts", "convert_basic_c2_names"]

logger = logging.getLogger(__name__)


@dataclass
class MatchReport:
    """What :func:`align_and_update_state_dicts` did.

    Attributes:
        matched: model key -> the (original) checkpoint key it was loaded from.
        missing: model keys that no checkpoint key matched (sorted).
        unexpected: checkpoint keys (original names) that filled no model key (sorted).
        shape_mismatched: model key -> (checkpoint shape, model shape) for matches that were
            skipped because the shapes differ.
    """

    matched: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=dict
    )


# (pattern, replacement) applied in order to names that already had "_" replaced by ".". These are
# the backbone rules of detectron2's Caffe2 conversion (ImageNet files such as
# ImageNetPretrained/MSRA/R-101.pkl); detection-head renames do not apply to segmentation models.
_C2_RULES: tuple[tuple[str, str], ...] = (
    (r"\.b$", ".bias"),
    (r"\.w$", ".weight"),
    # Caffe2 calls the affine BN parameters s/b (and rm/riv for running stats); GN uses s/b too.
    (r"bn\.s$", "norm.weight"),
    (r"bn\.bias$", "norm.bias"),
    (r"bn\.rm", "norm.running_mean"),
    (r"bn\.running\.mean$", "norm.running_mean"),
    (r"bn\.riv$", "norm.running_var"),
    (r"bn\.running\.var$", "norm.running_var"),
    (r"bn\.gamma$", "norm.weight"),
    (r"bn\.beta$", "norm.bias"),
    (r"gn\.s$", "norm.weight"),
    (r"gn\.bias$", "norm.bias"),
    # The stem's BN is "res_conv1_bn"; prefix the stem so "conv1" cannot match a head's conv1.
    (r"^res\.conv1\.norm\.", "conv1.norm."),
    (r"^conv1\.", "stem.conv1."),
    (r"\.branch1\.", ".shortcut."),
    (r"\.branch2a\.", ".conv1."),
    (r"\.branch2b\.", ".conv2."),
    (r"\.branch2c\.", ".conv3."),
)
# Each rule as (literal, compiled pattern, replacement). Every pattern is a literal text with
# optional ^/$ anchors, so it can only match a name containing that literal; testing `in` first
# skips almost every regex call (a 10^6-blob file converts in about a second instead of ten).
_C2_COMPILED: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (re.sub(r"\\(.)", r"\1", pattern.strip("^$")), re.compile(pattern), repl)
    for pattern, repl in _C2_RULES
)


def convert_basic_c2_names(names: list[str]) -> list[str]:
    """Rename Caffe2 ResNet blob names to detectron2's module names.

    ``res2_0_branch2a_w`` -> ``res2.0.conv1.weight``, ``res_conv1_bn_s`` ->
    ``stem.conv1.norm.weight``, ``res3_0_branch1_bn_b`` -> ``res3.0.shortcut.norm.bias``.
    Names that already contain a dot are module paths, not Caffe2 blobs, and stay unchanged.

    Args:
        names: Caffe2 blob names.

    Returns:
        The converted names, in the same order.
    """
    out = []
    for name in names:
        if "." in name:
            # Caffe2 blob names never contain dots; a dotted name is already a module path
            # (a raw dict of arrays saved from PyTorch) and "_" -> "." would corrupt names
            # like `running_mean`. detectron2 renames these too; keeping them is deliberate.
            out.append(name)
            continue
        name = {"pred_b": "linear_b", "pred_w": "linear_w"}.get(name, name)
        name = name.replace("_", ".")
        for literal, pattern, repl in _C2_COMPILED:
            if literal in name:
                name = pattern.sub(repl, name)
        out.append(name)
    return out


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in value.shape)


def _names_to_original(original_keys: list[str], *, c2_conversion: bool) -> dict[str, str]:
    """Map the names used for matching back to the checkpoint's own keys.

    Args:
        original_keys: the checkpoint's keys, sorted.
        c2_conversion: rename them with :func:`convert_basic_c2_names` first.

    Returns:
        matching name -> original checkpoint key (the identity without `c2_conversion`).

    Raises:
        ValueError: the Caffe2 renaming maps two blobs to one name.
    """
    if not c2_conversion:
        return {k: k for k in original_keys}
    renamed = convert_basic_c2_names(original_keys)
    if len(set(renamed)) != len(renamed):
        dup = sorted(name for name, n in Counter(renamed).items() if n > 1)
        raise ValueError(
            f"Caffe2 name conversion maps several blobs to {dup[:5]}"
            + (f" and {len(dup) - 5} more names" if len(dup) > 5 else "")
        )
    return dict(zip(renamed, original_keys))


def _longest_suffix_match(key_model: str, ckpt: Mapping[str, Any]) -> str | None:
    """The longest checkpoint key ``b`` with ``key_model == b or key_model.endswith("." + b)``.

    Args:
        key_model: a model state-dict key.
        ckpt: the checkpoint keyed by matching names; only membership is tested.

    Returns:
        The matching checkpoint key, or None when none matches.
    """
    # `a.endswith("." + b)` means b is `a` with some leading dotted components removed, so
    # trying those suffixes from the longest down finds detectron2's longest match directly
    # instead of comparing every pair of keys.
    parts = key_model.split(".")
    return next((s for s in (".".join(parts[i:]) for i in range(len(parts))) if s in ckpt), None)


def align_and_update_state_dicts(
    model_state_dict: Mapping[str, Any],
    ckpt_state_dict: Mapping[str, Any],
    *,
    c2_conversion: bool = False,
) -> tuple[dict[str, Any], MatchReport]:
    """Re-key a checkpoint state dict to the model's names by suffix matching.

    Args:
        model_state_dict: the model's state dict; only its keys and value shapes are read.
        ckpt_state_dict: checkpoint name -> array or tensor (anything with ``.shape``).
        c2_conversion: first rename Caffe2 blob names with :func:`convert_basic_c2_names`
            (detectron2 does this for ``.pkl`` files without ``"__author__"``).

    Returns:
        ``(state_dict, report)``: model key -> checkpoint value for every match with the right
        shape (ready for ``model.load_state_dict(strict=False)``), and the match report.

    Raises:
        ValueError: one checkpoint key matches two model keys, or the Caffe2 renaming maps two
            blobs to one name.
    """
    to_original = _names_to_original(sorted(ckpt_state_dict), c2_conversion=c2_conversion)
    ckpt = {new: ckpt_state_dict[old] for new, old in to_original.items()}

    result: dict[str, Any] = {}
    report = MatchReport()
    used_by: dict[str, str] = {}  # checkpoint key -> model key it filled
    wrong_shape: set[str] = set()  # checkpoint keys skipped for their shape
    for key_model in sorted(model_state_dict):
        key_ckpt = _longest_suffix_match(key_model, ckpt)
        if key_ckpt is None:
            continue
        value = ckpt[key_ckpt]
        shape_model = _shape(model_state_dict[key_model])
        if _shape(value) != shape_model:
            logger.warning(
                "Shape of %s in checkpoint is %s, while shape of %s in model is %s; it will not "
                "be loaded.",
                to_original[key_ckpt],
                _shape(value),
                key_model,
                shape_model,
            )
            report.shape_mismatched[key_model] = (_shape(value), shape_model)
            wrong_shape.add(key_ckpt)
            continue
        if key_ckpt in used_by:
            raise ValueError(
                f"Ambiguous checkpoint: key {to_original[key_ckpt]!r} matches both "
                f"{used_by[key_ckpt]!r} and {key_model!r} in the model; rename the checkpoint "
                "keys to the model's full names so each one has a single match."
            )
        used_by[key_ckpt] = key_model
        result[key_model] = value
        report.matched[key_model] = to_original[key_ckpt]

    # A key skipped for its shape is reported once, as shape-mismatched, not also as missing or
    # unexpected.
    report.missing = sorted(
        k for k in model_state_dict if k not in result and k not in report.shape_mismatched
    )
    report.unexpected = sorted(
        to_original[k] for k in ckpt if k not in used_by and k not in wrong_shape
    )
    return result, report
