"""The dispatcher's error handling, through real `python -m atrous.cli.main` processes.

Every anticipated error ends in one ``error:`` line (two for the longer ones) on stderr, with
exit status 2 for usage/config errors and 1 for run-time errors; the traceback goes to
``OUTPUT_DIR/log.txt`` and, with ``--verbose``, to the console. Bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.cli.main import EXIT_FAILURE, EXIT_USAGE, dispatch
from atrous.utils.devices import DeviceError
from tests.helpers import QUICKSTART, SMALL_REFERENCE_OVERRIDES, TINY, V3PLUS_CONFIG

REPO = Path(__file__).resolve().parents[2]


def _env(datasets: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    env.pop("ATROUS_VERBOSE", None)
    if datasets is not None:
        env["ATROUS_DATASETS"] = str(datasets)
    env.update(extra)
    return env


def _atrous(
    *args: str, datasets: Path | None = None, entry: tuple[str, ...] = ("-m", "atrous.cli.main")
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *entry, *args],
        cwd=REPO,
        env=_env(datasets),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _train(out: Path, *opts: str, flags: tuple[str, ...] | list[str] = ()) -> list[str]:
    return ["train", "--config-file", str(QUICKSTART), *flags, *TINY, "OUTPUT_DIR", str(out),
            *opts]  # fmt: skip


def _assert_error_line(
    proc: subprocess.CompletedProcess, code: int, *fragments: str, max_lines: int = 2
) -> str:
    """stderr is at most `max_lines` lines, the error, and no traceback; returns the error."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert 1 <= len(lines) <= max_lines, proc.stderr[-3000:]
    assert lines[0].startswith("error: "), proc.stderr[-3000:]
    message = "\n".join(lines)
    for fragment in fragments:
        assert fragment in message
    return message


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from atrous.data.datasets.synthetic import generate_dataset

    base = tmp_path_factory.mktemp("datasets")
    generate_dataset(base / "synthetic", num_train=4, num_val=2, size=(64, 128), seed=3)
    return base


# ------------------------------------------------------------------ config errors: exit 2


@pytest.mark.parametrize(
    ("opts", "fragments"),
    [
        (["SOLVER.BASE_LRR", "0.1"],
         ["Unknown config key 'SOLVER.BASE_LRR'", "Did you mean 'SOLVER.BASE_LR'?"]),
        (["SOLVER.IMS_PER_BATCH", "0"], ["SOLVER.IMS_PER_BATCH must be a positive whole number"]),
        (["SOLVER.MAX_ITER", "1.5"], ["SOLVER.MAX_ITER", "must be an int", "got 1.5, a float"]),
        (["INPUT.CROP.SIZE", "(60, 64)"], ["INPUT.CROP.SIZE (60, 64) must be divisible by"]),
        (["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"],
         ["MODEL.SEM_SEG_HEAD.NUM_CLASSES is 5", "'synthetic_sem_seg_val' has 19 classes"]),
        # An int for a float key is accepted: the run gets as far as the next mistake.
        (["SOLVER.BASE_LR", "1", "SOLVER.MOMENTUM", "0", "SOLVER.LR_SCHEDULER_NAME", "Poly"],
         ["SOLVER.LR_SCHEDULER_NAME is 'Poly'; it must be one of 'WarmupPolyLR'"]),
    ],
)  # fmt: skip
def test_config_errors_are_one_line_and_exit_2(tmp_path, datasets, opts, fragments) -> None:
    proc = _atrous(*_train(tmp_path / "run", *opts), datasets=datasets)
    _assert_error_line(proc, EXIT_USAGE, *fragments, max_lines=1)
    assert not (tmp_path / "run").exists()  # found before any work


def test_batch_not_divisible_by_processes_fails_in_the_parent(tmp_path, datasets) -> None:
    proc = _atrous(
        *_train(tmp_path / "run", "SOLVER.IMS_PER_BATCH", "3", flags=["--num-gpus", "2"]),
        datasets=datasets,
    )
    _assert_error_line(
        proc, EXIT_USAGE, "SOLVER.IMS_PER_BATCH (3) must be divisible by the number of processes "
        "(2): set SOLVER.IMS_PER_BATCH 2 or 4", max_lines=1,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [(["--num-gpus", "0"], "--num-gpus must be at least 1, got 0."),
     (["--num-machines", "2"], "--dist-url auto only works on one machine")],
)  # fmt: skip
def test_bad_launch_flags_are_usage_errors(tmp_path, flags, fragment) -> None:
    proc = _atrous(*_train(tmp_path / "run", flags=flags))
    _assert_error_line(proc, EXIT_USAGE, fragment, max_lines=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_on_a_cpu_machine_names_the_fix(tmp_path, datasets) -> None:
    proc = _atrous(*_train(tmp_path / "run", "MODEL.DEVICE", "cuda"), datasets=datasets)
    _assert_error_line(proc, EXIT_USAGE, "MODEL.DEVICE is 'cuda'", "MODEL.DEVICE cpu", max_lines=1)


def test_int_for_float_in_a_yaml_file_is_accepted(tmp_path, datasets) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text(f"_BASE_: {QUICKSTART}\nSOLVER:\n  BASE_LR: 1\n  IMS_PER_BATCH: 0\n")
    proc = _atrous("train", "--config-file", str(config), "OUTPUT_DIR", str(tmp_path / "o"),
                   datasets=datasets)  # fmt: skip
    _assert_error_line(proc, EXIT_USAGE, "SOLVER.IMS_PER_BATCH", max_lines=1)  # not BASE_LR


# ------------------------------------------------------------------ --verbose and entry points


@pytest.mark.parametrize(
    "where", ["global", "command", "after-overrides", "train_net.py", "python -m atrous"]
)
def test_verbose_shows_the_traceback(tmp_path, where) -> None:
    args = ["--config-file", str(QUICKSTART), "SOLVER.BASE_LRR", "0.1"]
    entry: tuple[str, ...] = ("-m", "atrous.cli.main")
    if where == "global":
        args = ["--verbose", "train", *args]
    elif where == "command":
        args = ["train", "--verbose", *args]
    elif where == "after-overrides":
        args = ["train", *args, "--verbose"]
    elif where == "train_net.py":
        entry, args = (str(REPO / "train_net.py"),), ["--verbose", *args]
    else:
        entry, args = ("-m", "atrous"), ["train", "--verbose", *args]
    proc = _atrous(*args, entry=entry)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ConfigError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Unknown config key")


def test_python_dash_m_atrous_goes_through_the_dispatcher(tmp_path) -> None:
    proc = _atrous("train", "--config-file", str(QUICKSTART), "SOLVER.BASE_LRR", "1",
                   entry=("-m", "atrous"))  # fmt: skip
    _assert_error_line(proc, EXIT_USAGE, "Did you mean 'SOLVER.BASE_LR'?", max_lines=1)


def test_a_bug_keeps_its_traceback() -> None:
    def buggy(args: argparse.Namespace) -> int:
        return 1 // 0

    with pytest.raises(ZeroDivisionError):
        dispatch(buggy, argparse.Namespace(verbose=False))


def test_system_exit_with_a_message_becomes_an_error_line(capsys) -> None:
    def usage(args: argparse.Namespace) -> int:
        raise SystemExit("--batch must be at least 1, got 0.")

    def failure(args: argparse.Namespace) -> int:
        try:
            raise OSError(5, "Input/output error", "w.pkl")
        except OSError:
            raise SystemExit("cannot load w.pkl") from None

    with pytest.raises(SystemExit) as stop:
        dispatch(usage, argparse.Namespace())
    assert stop.value.code == EXIT_USAGE and "at least 1" in str(stop.value)
    with pytest.raises(SystemExit) as stop:
        dispatch(failure, argparse.Namespace())
    assert stop.value.code == EXIT_FAILURE
    assert capsys.readouterr().err.splitlines() == [
        "error: --batch must be at least 1, got 0.",
        "error: cannot load w.pkl",
    ]


# ------------------------------------------------------------------ run-time errors: exit 1


@pytest.fixture(scope="module")
def corrupt_datasets(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("corrupt")
    shutil.copytree(datasets / "synthetic", base / "synthetic")
    for image in sorted((base / "synthetic" / "leftImg8bit" / "train").rglob("*.png")):
        image.write_bytes(image.read_bytes()[:300])  # truncated: a PNG that cannot be decoded
    return base


def test_data_error_in_a_loader_worker_is_one_line_and_logged(tmp_path, corrupt_datasets) -> None:
    out = tmp_path / "run"
    proc = _atrous(*_train(out, "DATALOADER.NUM_WORKERS", "1"), datasets=corrupt_datasets)
    message = _assert_error_line(proc, EXIT_FAILURE, "cannot decode the image", max_lines=1)
    # The worker's own traceback text is not part of the message.
    assert "DataLoader worker" not in message and "Original Traceback" not in message
    log = (out / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and "ImageReadError" in log


@pytest.mark.slow
def test_data_error_in_a_spawned_rank_is_one_line_from_the_parent(
    tmp_path, corrupt_datasets
) -> None:
    out = tmp_path / "run"
    proc = _atrous(
        *_train(out, "DATALOADER.NUM_WORKERS", "1", flags=["--num-gpus", "2"]),
        datasets=corrupt_datasets,
    )
    _assert_error_line(proc, EXIT_FAILURE, "cannot decode the image", max_lines=1)
    assert "Traceback" in (out / "log.txt").read_text()


def test_disk_full_during_a_checkpoint_save_names_the_file(tmp_path, datasets, tmpfs) -> None:
    # Room for the start-up checks (50 MB for logs plus one checkpoint); keeping every
    # checkpoint then fills the disk during a save a few iterations in.
    disk = tmpfs("51m")
    opts = ("SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.MAX_TO_KEEP", "0", "SOLVER.MAX_ITER", "2000")
    proc = _atrous(*_train(disk / "run", *opts), datasets=datasets)
    _assert_error_line(
        proc, EXIT_FAILURE, "No space left on device while writing",
        str(disk / "run" / "model_"), ".pth: free space or set OUTPUT_DIR", "[Errno 28]",
        max_lines=1,
    )  # fmt: skip
    assert not list((disk / "run").glob("*.tmp")) and not list((disk / "run").glob(".*.tmp"))


def test_read_only_output_dir_in_train(tmp_path, datasets, tmpfs) -> None:
    disk = tmpfs("100k", readonly=True)
    proc = _atrous(*_train(disk / "run"), datasets=datasets)
    _assert_error_line(proc, EXIT_FAILURE, "Read-only file system", str(disk / "run"), max_lines=1)


def test_evaluate_refuses_a_read_only_output_before_inference(tmp_path, datasets, tmpfs) -> None:
    disk = tmpfs("100k", readonly=True)
    proc = _atrous("evaluate", "--config-file", str(QUICKSTART), "--output", str(disk / "ev"),
                   *TINY, datasets=datasets)  # fmt: skip
    _assert_error_line(proc, EXIT_FAILURE, "Read-only file system", str(disk / "ev"), max_lines=1)


# ------------------------------------------------------------------ evaluate: weights and names


def _write_custom_dataset(root: Path, num_classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for name in ("a 1", "b 2"):  # names with spaces, listed in quotes
        (root / "my images").mkdir(parents=True, exist_ok=True)
        (root / "my masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            root / "my images" / f"{name}.png"
        )
        mask = rng.integers(0, num_classes, (64, 64), dtype=np.uint8)
        Image.fromarray(mask).save(root / "my masks" / f"{name}.png")
    (root / "val.txt").write_text(
        '"my images/a 1.png" "my masks/a 1.png"\nmy images/b 2.png\tmy masks/b 2.png\n'
    )
    spec = root / "data.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""\
            classes: [{", ".join(f"c{i}" for i in range(num_classes))}]
            ignore_value: 255
            splits:
              val: {{list: val.txt}}
            """
        )
    )
    return spec


@pytest.fixture(scope="module")
def weights_19_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the TINY quickstart model with its 19-class head."""
    from atrous.config import get_cfg
    from atrous.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(str(QUICKSTART))
    cfg.merge_from_list(TINY)
    path = tmp_path_factory.mktemp("weights") / "model_19.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


def test_evaluate_refuses_weights_whose_head_does_not_fit(tmp_path, weights_19_classes) -> None:
    spec = _write_custom_dataset(tmp_path / "data")
    args = ["evaluate", "--config-file", str(QUICKSTART), "--output", str(tmp_path / "ev"), *TINY,
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3", "DATASETS.TEST", f"('{spec}:val',)",
            "MODEL.WEIGHTS", str(weights_19_classes)]  # fmt: skip
    proc = _atrous(*args)
    assert proc.returncode == EXIT_FAILURE, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "does not fit this model" in errors[0]
    # Only the classifier differs: the message says so in classes, and what to do.
    assert "it predicts 19 classes, this model 3" in errors[0]
    assert "NUM_CLASSES 19" in errors[0]
    assert errors[0].endswith("or pass --allow-partial to use them anyway.")
    assert "Start inference" not in proc.stderr
    assert not (tmp_path / "ev" / "inference" / "results.json").exists()

    accepted = _atrous(*args[:1], "--allow-partial", *args[1:])
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert (tmp_path / "ev" / "inference" / "results.json").is_file()


def test_predict_refuses_weights_whose_head_does_not_fit(tmp_path, weights_19_classes) -> None:
    spec = _write_custom_dataset(tmp_path / "data")
    proc = _atrous("predict", "--config-file", str(QUICKSTART), "--input",
                   str(tmp_path / "data" / "my images"), "--output", str(tmp_path / "p"), *TINY,
                   "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3", "DATASETS.TEST", f"('{spec}:val',)",
                   "MODEL.WEIGHTS", str(weights_19_classes))  # fmt: skip
    assert proc.returncode == EXIT_FAILURE
    assert "does not fit this model" in proc.stderr and "Traceback" not in proc.stderr


def test_non_ascii_cityscapes_city_is_rejected_before_inference(tmp_path, datasets) -> None:
    root = tmp_path / "ds" / "synthetic"
    shutil.copytree(datasets / "synthetic", root)
    for top in ("leftImg8bit", "gtFine"):
        city = next(p for p in sorted((root / top / "val").iterdir()) if p.is_dir())
        renamed = city.with_name("münchen")
        city.rename(renamed)
        for f in renamed.iterdir():
            f.rename(f.with_name(f.name.replace(city.name, "münchen")))
    proc = _atrous("evaluate", "--config-file", str(QUICKSTART), "--output", str(tmp_path / "ev"),
                   *TINY, datasets=tmp_path / "ds")  # fmt: skip
    assert proc.returncode == EXIT_FAILURE, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "münchen" in last and "ASCII" in last
    assert "Start inference" not in proc.stderr


def test_benchmark_onnx_below_the_crop_size_is_a_usage_error() -> None:
    pytest.importorskip("onnxruntime")
    proc = _atrous("benchmark", "--config-file", str(V3PLUS_CONFIG), "--onnx", "--size", "32x64",
                   "--iters", "1", "--warmup", "0", *SMALL_REFERENCE_OVERRIDES,
                   "INPUT.CROP.ENABLED", "True", "INPUT.CROP.SIZE", "(64, 128)")  # fmt: skip
    _assert_error_line(
        proc, EXIT_USAGE, "--size 32x64 is below the smallest input", "64x128", max_lines=2
    )


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (PermissionError(13, "Permission denied", "/data/out/log.txt"), EXIT_FAILURE,
         "error: Permission denied: cannot write /data/out/log.txt: set OUTPUT_DIR (or --output) "
         "to a folder you can write, or fix its permissions. [Errno 13]"),
        (OSError(122, "Disk quota exceeded", "/q/model.pth"), EXIT_FAILURE,
         "error: Disk quota exceeded while writing /q/model.pth: free space or set OUTPUT_DIR "
         "(or --output) elsewhere. [Errno 122]"),
        (FloatingPointError("Loss became infinite or NaN at iteration=3!"), EXIT_FAILURE,
         "error: Loss became infinite or NaN at iteration=3!"),
        (FileNotFoundError("Config file 'x.yaml' does not exist."), EXIT_USAGE,
         "error: Config file 'x.yaml' does not exist."),
        (DeviceError("--num-gpus 8 asks for one GPU per process, but only 2 are visible"),
         EXIT_USAGE, "error: --num-gpus 8 asks for one GPU per process, but only 2 are visible"),
    ],
)  # fmt: skip
def test_error_types_map_to_exit_codes_and_lines(capsys, error, code, line) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise error

    assert dispatch(fail, argparse.Namespace()) == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_a_rank_killed_by_a_signal_is_one_line(capsys) -> None:
    import torch.multiprocessing as mp

    def killed(args: argparse.Namespace) -> int:
        raise mp.ProcessExitedException(
            "process 1 terminated with signal SIGKILL",
            error_index=1, error_pid=1234, exit_code=-9, signal_name="SIGKILL",
        )  # fmt: skip

    assert dispatch(killed, argparse.Namespace()) == EXIT_FAILURE
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: a training process died") and "SIGKILL" in line
