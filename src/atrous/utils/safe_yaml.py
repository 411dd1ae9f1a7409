"""YAML from files anyone may have written: safe types only, and a bounded size after aliases.

``yaml.safe_load`` executes nothing, but a kilobyte of nested aliases (``b: [*a, *a, ...]``,
"billion laughs") stands for billions of values: cheap to parse, since aliases share one object,
and then exhausting memory in whatever walks the result (merging a config, copying it, printing
it). `load_yaml` counts the values the document stands for, aliases expanded, before building
any Python object, and refuses a document over the budget.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_VALUES", "YAMLBudgetError", "load_yaml"]

# Far above any config, dataset file or bundle (the largest shipped config expands to a few
# hundred values; a dataset YAML with 255 classes and their colours to about two thousand).
MAX_YAML_VALUES = 100_000
MAX_YAML_BYTES = 4 << 20


class YAMLBudgetError(ValueError):
    """A YAML document too large, too deep or recursive; the message says which."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def expanded_size(node: yaml.Node, limit: int) -> int:
    """Values `node` stands for with every alias expanded, counted up to ``limit + 1``.

    Shared nodes are counted once per use, in time linear in the distinct nodes.

    Raises:
        YAMLBudgetError: the document refers to itself (a recursive alias).
    """
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        current, done = stack.pop()
        key = id(current)
        if done:
            total = 1 + sum(sizes[id(c)] for c in _children(current))
            sizes[key] = min(total, limit + 1)
            in_progress.discard(key)
            continue
        if key in sizes:
            continue
        if key in in_progress:
            raise YAMLBudgetError("it contains itself through an alias (a recursive structure)")
        in_progress.add(key)
        stack.append((current, True))
        stack.extend((child, False) for child in _children(current))
    return sizes[id(node)]


def load_yaml(text: str, *, max_values: int = MAX_YAML_VALUES) -> Any:
    """``yaml.safe_load(text)``, refused when it stands for more than `max_values` values.

    Raises:
        YAMLBudgetError: longer than `MAX_YAML_BYTES`, more values than `max_values` once aliases
            are expanded, recursive, or nested too deeply to parse.
        yaml.YAMLError: not valid YAML.
    """
    if len(text) > MAX_YAML_BYTES:
        raise YAMLBudgetError(
            f"it is {len(text):,} characters long, more than the {MAX_YAML_BYTES:,} a YAML file "
            "of atrous may have"
        )
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YAMLBudgetError("it is nested too deeply to parse") from None
        if node is None:
            return None
        if expanded_size(node, max_values) > max_values:
            raise YAMLBudgetError(
                f"it stands for more than {max_values:,} values once its aliases (*name) are "
                "expanded, far more than any config or dataset file; it was refused unread"
            )
        try:
            return loader.construct_document(node)
        except RecursionError:
            raise YAMLBudgetError("it is nested too deeply to parse") from None
    finally:
        loader.dispose()
