"""Suffix matching behaves exactly like detectron2's align_and_update_state_dicts."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atrous.checkpoint import align_and_update_state_dicts, convert_basic_c2_names


def _arr(*shape):
    return np.zeros(shape, dtype=np.float32)


def _brute_force(model_keys, ckpt_keys):
    """detectron2's definition: a match matrix of len(b) where a == b or a ends with "." + b."""
    out = {}
    for a in model_keys:
        matches = [b for b in ckpt_keys if a == b or a.endswith("." + b)]
        if matches:
            out[a] = max(matches, key=len)
    return out


def test_backbone_only_names_match_with_prefix():
    model = {"backbone.res2.0.conv1.weight": _arr(2), "sem_seg_head.predictor.weight": _arr(3)}
    ckpt = {"res2.0.conv1.weight": np.ones(2, np.float32), "fc1000.weight": _arr(5)}
    state, report = align_and_update_state_dicts(model, ckpt)
    assert report.matched == {"backbone.res2.0.conv1.weight": "res2.0.conv1.weight"}
    np.testing.assert_array_equal(state["backbone.res2.0.conv1.weight"], 1)
    assert report.missing == ["sem_seg_head.predictor.weight"]
    assert report.unexpected == ["fc1000.weight"]


def test_longest_suffix_wins():
    model = {"backbone.conv1.weight": _arr(1), "backbone.res2.conv1.weight": _arr(2)}
    ckpt = {"conv1.weight": _arr(1), "res2.conv1.weight": _arr(2)}
    _, report = align_and_update_state_dicts(model, ckpt)
    assert report.matched == {
        "backbone.conv1.weight": "conv1.weight",
        "backbone.res2.conv1.weight": "res2.conv1.weight",
    }


def test_partial_component_is_not_a_match():
    # "whatever_conv1.weight" does not end with ".conv1.weight".
    _, report = align_and_update_state_dicts(
        {"head.whatever_conv1.weight": _arr(1)}, {"conv1.weight": _arr(1)}
    )
    assert report.matched == {} and report.unexpected == ["conv1.weight"]


def test_shape_mismatch_is_skipped_with_warning(caplog):
    model = {"sem_seg_head.predictor.weight": _arr(19, 8), "backbone.x": _arr(2)}
    ckpt = {"sem_seg_head.predictor.weight": _arr(21, 8), "backbone.x": _arr(2)}
    state, report = align_and_update_state_dicts(model, ckpt)
    assert "sem_seg_head.predictor.weight" not in state
    assert report.shape_mismatched == {"sem_seg_head.predictor.weight": ((21, 8), (19, 8))}
    assert report.missing == [] and report.unexpected == []
    assert "will not be loaded" in caplog.text


def test_one_checkpoint_key_for_two_model_keys_is_an_error():
    model = {"a.conv.weight": _arr(1), "b.conv.weight": _arr(1)}
    with pytest.raises(
        ValueError, match=re.escape("matches both 'a.conv.weight' and 'b.conv.weight'")
    ):
        align_and_update_state_dicts(model, {"conv.weight": _arr(1)})


_component = st.sampled_from(["a", "b", "conv1", "res2", "0", "norm", "weight"])
_key = st.lists(_component, min_size=1, max_size=4).map(".".join)


@settings(max_examples=200, deadline=None)
@given(st.sets(_key, max_size=12), st.sets(_key, max_size=12))
def test_same_pairs_as_detectron2_match_matrix(model_keys, ckpt_keys):
    expected = _brute_force(model_keys, ckpt_keys)
    model = {k: _arr(1) for k in model_keys}
    ckpt = {k: _arr(1) for k in ckpt_keys}
    if len(set(expected.values())) != len(expected):
        with pytest.raises(ValueError):
            align_and_update_state_dicts(model, ckpt)
        return
    state, report = align_and_update_state_dicts(model, ckpt)
    assert report.matched == expected
    assert sorted(state) == sorted(expected)
    assert report.missing == sorted(set(model_keys) - set(expected))
    assert report.unexpected == sorted(set(ckpt_keys) - set(expected.values()))


def test_caffe2_resnet_names():
    names = [
        "conv1_w",
        "res_conv1_bn_s",
        "res_conv1_bn_b",
        "res2_0_branch1_w",
        "res2_0_branch1_bn_s",
        "res2_0_branch2a_w",
        "res2_0_branch2b_bn_b",
        "res5_2_branch2c_bn_rm",
        "res5_2_branch2c_bn_riv",
        "fc1000_w",
        "pred_b",
        "res2.0.conv1.norm.running_mean",  # already a module path: unchanged
    ]
    assert convert_basic_c2_names(names) == [
        "stem.conv1.weight",
        "stem.conv1.norm.weight",
        "stem.conv1.norm.bias",
        "res2.0.shortcut.weight",
        "res2.0.shortcut.norm.weight",
        "res2.0.conv1.weight",
        "res2.0.conv2.norm.bias",
        "res5.2.conv3.norm.running_mean",
        "res5.2.conv3.norm.running_var",
        "fc1000.weight",
        "linear.bias",
        "res2.0.conv1.norm.running_mean",
    ]


def test_caffe2_conversion_reports_original_names():
    model = {"backbone.stem.conv1.weight": _arr(4), "backbone.res2.0.conv1.weight": _arr(2)}
    ckpt = {"conv1_w": _arr(4), "res2_0_branch2a_w": _arr(2), "fc1000_b": _arr(3)}
    _, report = align_and_update_state_dicts(model, ckpt, c2_conversion=True)
    assert report.matched == {
        "backbone.stem.conv1.weight": "conv1_w",
        "backbone.res2.0.conv1.weight": "res2_0_branch2a_w",
    }
    assert report.unexpected == ["fc1000_b"]


def _convert_by_regex_only(name):
    """convert_basic_c2_names without its literal pre-check: every rule, in order."""
    from atrous.checkpoint.detectron2 import _C2_RULES

    if "." in name:
        return name
    name = {"pred_b": "linear_b", "pred_w": "linear_w"}.get(name, name)
    name = name.replace("_", ".")
    for pattern, repl in _C2_RULES:
        name = re.sub(pattern, repl, name)
    return name


_C2_PARTS = "res conv1 bn gn s b w rm riv running mean var gamma beta branch1 branch2a branch2b"
_c2_part = st.sampled_from([*_C2_PARTS.split(), "branch2c", "0", "2", "pred", "fc1000", "x"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_c2_part, min_size=1, max_size=7).map("_".join), max_size=10))
def test_caffe2_conversion_equals_applying_every_rule(names):
    assert convert_basic_c2_names(names) == [_convert_by_regex_only(n) for n in names]


_MILLION = 10**6


@pytest.mark.slow
def test_a_million_keys_match_and_fail_in_seconds():
    # Hostile files can hold any number of keys; each step must be linear in their number
    # (a quadratic duplicate check took minutes to reject such a file).
    model = {f"backbone.res{i % 4 + 2}.{i}.conv1.weight": _arr(1) for i in range(1000)}
    ckpt = {f"res{i % 4 + 2}.{i}.conv1.weight": _arr(1) for i in range(_MILLION)}
    start = time.perf_counter()
    _, report = align_and_update_state_dicts(model, ckpt)
    assert len(report.matched) == 1000 and len(report.unexpected) == _MILLION - 1000
    blobs = {f"res{i % 4 + 2}_{i}_branch2a_bn_s": _arr(1) for i in range(_MILLION)}
    # Two Caffe2 blobs for one module name: rejected, naming the name.
    blobs["res2.0.conv1.norm.weight"] = _arr(1)
    with pytest.raises(ValueError, match=re.escape("maps several blobs to ['res2.0.conv1.norm")):
        align_and_update_state_dicts(model, blobs, c2_conversion=True)
    # About 6 s on an idle core; the quadratic check needed hours for this many keys, so the
    # bound only has to survive a busy machine.
    assert time.perf_counter() - start < 60
