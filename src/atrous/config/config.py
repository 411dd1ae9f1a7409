"""A yacs/fvcore `CfgNode` with errors that tell the user what to do.

fvcore provides `_BASE_` inheritance (paths relative to the including file) and yacs provides
type-checked merging; this subclass only improves the messages: an unknown key names the closest
valid key, and a missing `_BASE_` file names the file that referenced it.
"""

from __future__ import annotations

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
        # yacs words it differently for files ("config key") and for override lists ("key").
        match = re.match(r"Non-existent (?:config )?key: (\S+)", message)
        if match is None:
            return ConfigError(f"Bad value in {source}: {message}")
        bad_key = match.group(1)
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

    def merge_from_list(self, cfg_list: Sequence[Any]) -> CfgNode:
        """Merge ``["KEY", "VALUE", ...]`` overrides (values parsed as YAML literals)."""
        if len(cfg_list) % 2 != 0:
            raise ConfigError(
                f"Overrides must come in KEY VALUE pairs, got an odd number of items: "
                f"{list(cfg_list)}"
            )
        try:
            super().merge_from_list(list(cfg_list))
        except (KeyError, AssertionError, ValueError) as error:
            raise self._unknown_key_error(error, "the command-line overrides") from None
        return self


def _check_file_chain(filename: str, referenced_by: str | None = None) -> None:
    """Fail early, naming the including file, when a config or one of its `_BASE_`s is missing."""
    import yaml

    if not os.path.isfile(filename):
        where = f" (the _BASE_ of {referenced_by})" if referenced_by else ""
        raise FileNotFoundError(
            f"Config file {filename!r}{where} does not exist. Check the path; _BASE_ paths are "
            "relative to the file that names them."
        )
    with open(filename, encoding="utf-8") as f:
        try:
            content = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"Config file {filename!r} is not valid YAML: {error}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"Config file {filename!r} must contain a mapping of keys.")
    bases = content.get("_BASE_")
    if bases is None:
        return
    for base in bases if isinstance(bases, list) else [bases]:
        base = os.path.expanduser(base)
        if not os.path.isabs(base):
            base = os.path.join(os.path.dirname(filename), base)
        _check_file_chain(base, referenced_by=filename)
