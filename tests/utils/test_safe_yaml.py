"""`load_yaml`: safe YAML with a budget on what aliases expand to (files made here)."""

from __future__ import annotations

import time

import pytest

from atrous.utils.safe_yaml import YAMLBudgetError, load_yaml
from tests.helpers import alias_bomb


def test_ordinary_yaml_and_modest_aliases_load() -> None:
    assert load_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}
    assert load_yaml("") is None


def test_alias_bomb_is_refused_at_once() -> None:
    text = alias_bomb()
    assert len(text) < 1200
    start = time.perf_counter()
    with pytest.raises(YAMLBudgetError, match="once its aliases"):
        load_yaml(text)
    assert time.perf_counter() - start < 5


def test_recursive_and_too_deep_documents_are_refused() -> None:
    with pytest.raises(YAMLBudgetError, match="contains itself"):
        load_yaml("a: &a [*a]\n")
    with pytest.raises(YAMLBudgetError, match="nested too deeply"):
        load_yaml("[" * 100_000 + "]" * 100_000)
