"""Configuration: detectron2-compatible keys, `_BASE_` YAML files and `KEY VALUE` overrides."""

from .config import CfgNode, ConfigError
from .shipped import get_config_file, list_config_files, resolve_config_file


def get_cfg() -> CfgNode:
    """A fresh copy of the default config (detectron2 defaults plus projects/DeepLab's keys)."""
    from .defaults import _C

    return _C.clone()


__all__ = [
    "CfgNode",
    "ConfigError",
    "get_cfg",
    "get_config_file",
    "list_config_files",
    "resolve_config_file",
]
