"""A wheel built from this tree carries everything a command needs at run time.

The wheel is built and installed outside the repository; the quickstart then runs from an empty
folder against that install, so nothing from the source checkout can stand in for package data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from atrous.config import list_config_files

REPO = Path(__file__).resolve().parents[1]
# What a source tree holds that a wheel build has no business reading: anywhere, and at its top
# (the data and run folders; atrous.data.datasets is a package of the same name).
_NOT_SOURCES = (".git", ".venv", "*.egg-info", "__pycache__")
_NOT_SOURCES_AT_TOP = {"datasets", "output", "build", "dist"}


def _not_sources(folder: str, names: list[str]) -> set[str]:
    ignored = set(shutil.ignore_patterns(*_NOT_SOURCES)(folder, names))
    return ignored | (_NOT_SOURCES_AT_TOP & set(names) if Path(folder) == REPO else set())


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> tuple[Path, Path]:
    """(wheel file, folder the wheel was installed into with `pip install --target`)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=_not_sources, symlinks=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # The build runs against this interpreter's setuptools, so the test needs no network.
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = work.glob("atrous-*.whl")
    site = work / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return wheel, site


def _without_dataset_root(env: os._Environ[str]) -> dict[str, str]:
    # The quickstart must find its data under the current folder, as a new user's would.
    return {k: v for k, v in env.items() if k not in ("ATROUS_DATASETS", "DETECTRON2_DATASETS")}


def _run_installed(site: Path, cwd: Path, code: str) -> subprocess.CompletedProcess:
    # The installed copy comes first on the path; the check inside proves it is the one imported.
    prelude = (
        "import atrous, pathlib, sys\n"
        f"assert pathlib.Path(atrous.__file__).is_relative_to({str(site)!r}), atrous.__file__\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=cwd,
        env={**_without_dataset_root(os.environ), "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_the_wheel_holds_every_shipped_config(installed_wheel):
    wheel, _ = installed_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in list_config_files():
        assert f"atrous/configs/{config}" in names


@pytest.mark.slow
def test_get_config_file_finds_every_config_in_the_installed_package(installed_wheel, tmp_path):
    _, site = installed_wheel
    code = (
        "from atrous.config import get_cfg, list_config_files\n"
        "from atrous.model_zoo import get_config_file\n"
        "names = list_config_files()\n"
        "for name in names:\n"
        "    path = pathlib.Path(get_config_file(name))\n"
        f"    assert path.is_relative_to({str(site)!r}) and path.is_file(), path\n"
        "    get_cfg().merge_from_file(str(path))\n"
        "print(len(names))\n"
    )
    proc = _run_installed(site, tmp_path, code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) == len(list_config_files())


@pytest.mark.slow
def test_quickstart_runs_from_an_empty_folder_on_the_installed_wheel(installed_wheel, tmp_path):
    _, site = installed_wheel
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [
        "quickstart", "--num-train", "4", "--num-val", "2", "--size", "64x128",
        "--num-pictures", "1",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "16",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "INPUT.CROP.SIZE", "(64, 64)",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64",
        "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
    ]  # fmt: skip
    code = f"from atrous.cli.main import main\nsys.exit(main({argv!r}))\n"
    proc = _run_installed(site, empty, code)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[4/4] Wrote 1 prediction pictures" in proc.stdout
    assert (empty / "output" / "quickstart" / "model_final.pth").is_file()
    assert (empty / "datasets" / "synthetic" / "leftImg8bit" / "val").is_dir()
