"""The package version: installed metadata first, the source tree's pyproject.toml otherwise."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest
import torch

import atrous
from atrous.utils import version
from tests.helpers import REPO_ROOT

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else None


def _pyproject_version() -> str:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def test_version_is_the_distributions_or_the_source_trees():
    try:
        expected = importlib.metadata.version("atrous")
    except importlib.metadata.PackageNotFoundError:
        expected = _pyproject_version()
    assert atrous.__version__ == version.package_version() == expected


def test_source_tree_fallback_reads_this_checkouts_pyproject():
    assert version._source_tree_version() == _pyproject_version()


def test_without_an_installed_distribution_the_source_tree_answers(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    version.package_version.cache_clear()
    try:
        assert version.package_version() == _pyproject_version()
    finally:
        version.package_version.cache_clear()


def test_version_metadata_is_plain_strings():
    stamp = version.version_metadata()
    assert stamp == {"atrous_version": atrous.__version__, "torch_version": torch.__version__}
    assert all(isinstance(v, str) for v in stamp.values())
