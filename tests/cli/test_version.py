"""``atrous --version`` from the console script, from ``python -m atrous`` and in process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import atrous
from atrous.cli.main import COMMANDS, main
from tests.helpers import REPO_ROOT


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("module", ["atrous", "atrous.cli.main"])
def test_python_m_version(module):
    result = subprocess.run(
        [sys.executable, "-m", module, "--version"],
        capture_output=True, text=True, env=_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"atrous {atrous.__version__}"


def test_console_script_version():
    script = shutil.which("atrous", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the atrous console script is not installed next to this Python")
    result = subprocess.run(
        [script, "--version"], capture_output=True, text=True, env=_env(), timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"atrous {atrous.__version__}"


def test_version_in_process_and_in_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"atrous {atrous.__version__}\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--version" in out and "convert" in out
    assert "convert" in COMMANDS


def test_python_m_atrous_runs_a_command(tmp_path):
    # `python -m atrous` is the full dispatcher, not only --version.
    result = subprocess.run(
        [sys.executable, "-m", "atrous", "convert", str(tmp_path / "in.pkl"),
         str(tmp_path / "out.txt")],
        capture_output=True, text=True, env=_env(), timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "suffix" in result.stderr
