"""The reference outputs the parity tests rely on are the files their checksums name."""

from __future__ import annotations

import hashlib

import pytest

from tests.helpers import FIXTURE_REFERENCE_DIR, TORCHVISION_REFERENCE_DIR


@pytest.mark.parametrize("directory", [FIXTURE_REFERENCE_DIR, TORCHVISION_REFERENCE_DIR])
def test_reference_fixtures_match_their_checksums(directory):
    lines = (directory / "SHA256SUMS").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    on_disk = {p.name for p in directory.iterdir() if p.name not in ("README.md", "SHA256SUMS")}
    assert set(listed) == on_disk
    for name, digest in listed.items():
        actual = hashlib.sha256((directory / name).read_bytes()).hexdigest()
        assert actual == digest, f"tests/fixtures/{directory.name}/{name} differs from SHA256SUMS"
