"""The README opens with the two set-up commands, and CI runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    first_block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert first_block is not None
    return [line for line in first_block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_an_install_and_run_and_an_install_and_test_command():
    quickstart, tests = _setup_commands()
    assert quickstart.startswith("python3 -m venv .venv && ")
    assert quickstart.endswith("atrous quickstart")
    assert tests.startswith("python3 -m venv .venv && ")
    assert " -m pytest" in tests


def test_ci_runs_the_readme_test_command():
    _, tests = _setup_commands()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci
