"""A yacs/fvcore `CfgNode` with errors that tell the user what to do.

fvcore provides `_BASE_` inheritance (paths relative to the including file) and yacs provides
type-checked merging; this subclass improves the messages (an unknown key names the closest valid
key, a wrong type names the key and the expected type, a missing `_BASE_` file names the file that
referenced it) and accepts an integer where a float is expected (``BASE_LR: 1`` in a file,
``SOLVER.BASE_LR 1`` on the command line), as any YAML user would expect. A float for an integer
key stays an error: silently truncating ``MAX_ITER 1.5`` would hide a mistake.
"""

from __future__ import annotations

import collections
import difflib
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from fvcore.common.config import CfgNode as _FvcoreCfgNode

from .shipped import resolve_config_file

__all__ = ["CfgNode", "ConfigError"]


class ConfigError(KeyError):
    """An unknown key, a bad value or an unreadable config file.

    Subclasses KeyError so that code written against yacs (which raises KeyError for an unknown
    key) keeps working.
    """

    def __str__(self) -> str:  # KeyError quotes its message; show it as written.
        return str(self.args[0]) if self.args else ""


def _iter_full_keys(node: Any, prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _iter_full_keys(value, full + ".")
        else:
            yield full


class CfgNode(_FvcoreCfgNode):
    """Config node with detectron2's semantics and actionable error messages."""

    def all_keys(self) -> list[str]:
        """Every leaf key in dotted form, e.g. ``MODEL.RESNETS.DEPTH``."""
        return list(_iter_full_keys(self))

    def _unknown_key_error(self, error: Exception, source: str) -> ConfigError:
        message = str(error.args[0]) if error.args else str(error)
        mismatch = _TYPE_MISMATCH.match(message)
        if mismatch is not None:
            expected, given, default, value, key = mismatch.groups()
            return ConfigError(
                f"Config key {key} in {source} must be {_A[expected]} (like its current value "
                f"{_clip(default)}), got {_clip(value)}, {_A[given]}."
            )
        # yacs words it differently for files ("config key") and for override lists ("key").
        match = re.match(r"Non-existent (?:config )?key: (\S+)", message)
        if match is None:
            return ConfigError(f"Bad value in {source}: {_clip(message, 300)}")
        bad_key = match.group(1)
        if bad_key.startswith("-"):
            # argparse hands everything after the first KEY VALUE pair to the overrides.
            return ConfigError(
                f"{bad_key} comes after the KEY VALUE overrides, where it reads as a config key: "
                "put the command's options before the overrides."
            )
        close = difflib.get_close_matches(bad_key, self.all_keys(), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return ConfigError(
            f"Unknown config key {bad_key!r} in {source}.{hint} "
            "Run `atrous train --help` or see atrous/config/defaults.py for the valid keys."
        )

    def merge_from_file(self, cfg_filename: str | os.PathLike, allow_unsafe: bool = False) -> None:
        """Merge a YAML file (following `_BASE_`) into this config.

        A path that is not a file but names a config shipped with atrous (``configs/X.yaml`` or
        ``X.yaml``) reads the shipped copy; see :func:`~atrous.config.shipped.resolve_config_file`.

        Raises:
            FileNotFoundError: the file, or a `_BASE_` it names, does not exist.
            ConfigError: the file sets a key that does not exist.
        """
        cfg_filename = resolve_config_file(cfg_filename)
        _check_file_chain(cfg_filename)
        try:
            super().merge_from_file(cfg_filename, allow_unsafe=allow_unsafe)
        except (KeyError, AssertionError, ValueError) as error:
            raise self._unknown_key_error(error, cfg_filename) from None

    def merge_from_other_cfg(self, cfg_other: Any) -> Any:
        """Merge another config (what `merge_from_file` reads) into this one.

        Integers given for float keys become floats first, so ``BASE_LR: 1`` is accepted.
        """
        _ints_to_floats(cfg_other, self)
        return super().merge_from_other_cfg(cfg_other)

    def merge_from_list(self, cfg_list: Sequence[Any]) -> CfgNode:
        """Merge ``["KEY", "VALUE", ...]`` overrides (values parsed as YAML literals)."""
        options = [x for x in cfg_list if isinstance(x, str) and x.startswith("--")]
        if options and len(cfg_list) % 2 != 0:
            # argparse hands everything after the first KEY VALUE pair to the overrides, so a
            # flag typed there (`... SOLVER.BASE_LR 0.1 --fold-bn`) arrives here.
            raise ConfigError(
                f"{_clip(options[0])} comes after the KEY VALUE overrides, where it reads as a "
                "config key: put the command's options before the overrides."
            )
        if len(cfg_list) % 2 != 0:
            raise ConfigError(
                f"Overrides must come in KEY VALUE pairs, got an odd number of items: "
                f"{list(cfg_list)}"
            )
        items = list(cfg_list)
        for i in range(0, len(items), 2):
            target = self._leaf(str(items[i]))
            if type(target) is float:
                value = self._decode_cfg_value(items[i + 1])
                if type(value) is int:  # not bool: True is no learning rate
                    items[i + 1] = float(value)
        try:
            super().merge_from_list(items)
        except (KeyError, AssertionError, ValueError) as error:
            raise self._unknown_key_error(error, "the command-line overrides") from None
        return self

    def value_at(self, full_key: str) -> Any:
        """The value at dotted `full_key` (``"SOLVER.BASE_LR"``).

        Raises:
            KeyError: no such key.
        """
        node: Any = self
        for part in full_key.split("."):
            node = node[part]
        return node

    def _leaf(self, full_key: str) -> Any:
        """The current value at dotted `full_key`, or None where there is none."""
        node: Any = self
        for part in full_key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


# yacs: "Type mismatch (<class 'int'> vs. <class 'float'>) with values (40000 vs. 1.5) for config
# key: SOLVER.MAX_ITER"
_TYPE_MISMATCH = re.compile(
    r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values \((.*) vs\. (.*)\) "
    r"for config key: (\S+)$",
    re.DOTALL,
)


# "an int", "a float", ... for the type names yacs reports.
_A = collections.defaultdict(
    lambda: "of another type",
    {"int": "an int", "float": "a float", "str": "a string", "bool": "a bool (True/False)",
     "list": "a list", "tuple": "a tuple", "NoneType": "None"},
)  # fmt: skip


def _ints_to_floats(new: Any, old: Any) -> None:
    """Turn the integers of `new` into floats where `old` (the config merged into) has a float."""
    for key, value in new.items():
        if key not in old:
            continue
        if isinstance(value, dict) and isinstance(old[key], dict):
            _ints_to_floats(value, old[key])
        elif type(value) is int and type(old[key]) is float:
            new[key] = float(value)


def _clip(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters: a message quotes files and values, never at length."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_file_chain(filename: str, referenced_by: str | None = None, seen: tuple = ()) -> None:
    """Fail early, naming the including file, when a config or one of its `_BASE_`s is missing,
    not a YAML mapping, over the YAML size budget (`atrous.utils.safe_yaml`), or includes itself.
    """
    import yaml

    from atrous.utils.safe_yaml import MAX_YAML_BYTES, YAMLBudgetError, load_yaml

    where = f" (the _BASE_ of {referenced_by})" if referenced_by else ""
    if not os.path.isfile(filename):
        raise FileNotFoundError(
            f"Config file {_clip(repr(filename))}{where} does not exist. Check the path; _BASE_ "
            "paths are relative to the file that names them."
        )
    real = os.path.realpath(filename)
    if real in seen:
        raise ConfigError(
            f"Config file {filename!r}{where} includes itself through _BASE_ (a cycle); remove "
            "the _BASE_ entry that leads back to it."
        )
    try:
        with open(filename, encoding="utf-8") as f:
            content = load_yaml(f.read(MAX_YAML_BYTES + 1)) or {}
    except UnicodeDecodeError:
        raise ConfigError(
            f"Config file {filename!r}{where} is not a text file (not UTF-8); give a YAML file."
        ) from None
    except YAMLBudgetError as error:
        raise ConfigError(f"Config file {filename!r}{where} was refused: {error}.") from None
    except yaml.YAMLError as error:
        raise ConfigError(
            f"Config file {filename!r}{where} is not valid YAML: {_clip(str(error), 300)}"
        ) from None
    if not isinstance(content, dict):
        raise ConfigError(f"Config file {filename!r}{where} must contain a mapping of keys.")
    bases = content.get("_BASE_")
    if bases is None:
        return
    for base in bases if isinstance(bases, list) else [bases]:
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(
                f"Config file {filename!r}: _BASE_ must be a file name or a list of them, got "
                f"{_clip(repr(base))}."
            )
        base = os.path.expanduser(base)
        if not os.path.isabs(base):
            base = os.path.join(os.path.dirname(filename), base)
        _check_file_chain(base, referenced_by=filename, seen=(*seen, real))
