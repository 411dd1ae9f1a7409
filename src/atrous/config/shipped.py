"""The config files shipped inside the package, and how a command-line name finds them.

The YAML files live in ``atrous/configs/`` so that a wheel install carries them; the repository's
top-level ``configs/`` is a link to that folder, so the seed's command lines work verbatim from a
checkout. ``_BASE_`` paths are relative to the including file and therefore resolve inside the
package as well.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["SHIPPED_CONFIG_DIR", "get_config_file", "list_config_files", "resolve_config_file"]

logger = logging.getLogger(__name__)

SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
_SUFFIXES = (".yaml", ".yml")


def list_config_files() -> list[str]:
    """Names of the shipped configs relative to ``configs/``, e.g. ``"Synthetic/x.yaml"``."""
    return sorted(
        p.relative_to(SHIPPED_CONFIG_DIR).as_posix()
        for p in SHIPPED_CONFIG_DIR.rglob("*")
        if p.suffix in _SUFFIXES and p.is_file()
    )


def _shipped_name(name: str) -> str:
    # "configs/X.yaml", "./configs/X.yaml" and "X.yaml" all name the shipped "X.yaml".
    parts = [p for p in Path(name.replace("\\", "/")).parts if p not in (".", "")]
    if parts and parts[0] == "configs":
        parts = parts[1:]
    return "/".join(parts)


def get_config_file(name: str) -> str:
    """The absolute path of a shipped config, as detectron2's ``model_zoo.get_config_file``.

    Args:
        name: the config's path relative to ``configs/`` (the ``configs/`` prefix is optional),
            e.g. ``"Synthetic/deeplab_v3_plus_R_50_quickstart.yaml"``.

    Raises:
        FileNotFoundError: no shipped config has that name; the message lists the shipped ones.
    """
    relative = _shipped_name(name)
    path = SHIPPED_CONFIG_DIR / relative
    # A name must stay inside the shipped folder ("../x.yaml" is not a shipped config).
    if relative and path.resolve().is_relative_to(SHIPPED_CONFIG_DIR) and path.is_file():
        return str(path)
    shipped = "\n  ".join(list_config_files())
    raise FileNotFoundError(
        f"Config file {name!r} does not exist and is not a config shipped with atrous. "
        f"Shipped configs (name them with or without the configs/ prefix):\n  {shipped}"
    )


def resolve_config_file(path: str | os.PathLike[str]) -> str:
    """The file a ``--config-file`` value means: an existing path, else a shipped config.

    An existing file always wins, so a user's own ``configs/`` folder keeps working. When the
    shipped copy is used, one log line names it.

    Raises:
        FileNotFoundError: the path does not exist and names no shipped config.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    resolved = get_config_file(path)
    logger.info("Config %s is not a file here; using the shipped %s", path, resolved)
    return resolved
