"""`train_net.py` / `atrous train` end to end: real processes on a generated Cityscapes-layout set.

Covers a short training run and everything it writes, ``--eval-only`` from its checkpoint, bad
command lines, a 2-process gloo run against a single process, a NaN loss, a run killed with
SIGKILL in the middle of a checkpoint save and resumed to bit-identical weights, and the output
folder's guards: a busy folder, a used one, a resumed metrics.json, a dataset named by an
absolute path, an unknown test dataset.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.helpers import (
    QUICKSTART,
    REPO_ROOT,
    TINY,
    run_metrics,
    spoil_last_checkpoint,
    training_env,
    wait_for_iteration,
)


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with ``synthetic/`` (Cityscapes layout, 64x128) for $ATROUS_DATASETS."""
    from atrous.data.datasets.synthetic import generate_dataset

    base = tmp_path_factory.mktemp("datasets")
    generate_dataset(base / "synthetic", num_train=8, num_val=2, size=(64, 128), seed=3)
    return base


def _train(
    datasets_dir: Path,
    out: Path,
    *flags: str,
    opts: list[str] = (),
    timeout: int = 120,
    script: Path | None = None,
    config: Path = QUICKSTART,
) -> subprocess.CompletedProcess:
    entry = [str(script)] if script else [str(REPO_ROOT / "train_net.py")]
    cmd = [
        sys.executable,
        *entry,
        "--config-file",
        str(config),
        *flags,
        *TINY,
        "OUTPUT_DIR",
        str(out),
        *opts,
    ]
    env = training_env(datasets_dir)
    return subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True, map_location="cpu")["model"]


@pytest.fixture(scope="module")
def trained(datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted 8-iteration run (checkpoints every 2, the last 2 kept), shared."""
    out = tmp_path_factory.mktemp("trained") / "run"
    proc = _train(datasets_dir, out, opts=["SOLVER.MAX_ITER", "8", "SOLVER.MAX_TO_KEEP", "2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback needs a machine without")
def test_the_seed_command_runs_on_the_cpu_of_a_machine_without_gpus_and_says_so_once(
    trained: Path,
) -> None:
    # The shipped configs leave MODEL.DEVICE at its default, "auto": the GPUs where they exist
    # (detectron2's "cuda"), here the CPU, said once in the log.
    log = (trained / "log.txt").read_text(encoding="utf-8")
    assert log.count("No CUDA device is visible: running on the CPU") == 1
    assert "Training on cpu" in log
    assert "DEVICE: auto" in (trained / "config.yaml").read_text(encoding="utf-8")


def test_short_training_run_writes_everything(trained: Path) -> None:
    out = trained
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "log.txt", "metrics.json", "last_checkpoint", "training_curves.png",
            "model_0000005.pth", "model_0000007.pth", "model_final.pth"} <= names  # fmt: skip
    assert "model_0000003.pth" not in names  # rotated out by SOLVER.MAX_TO_KEEP
    assert list(out.glob("events.out.tfevents.*"))
    # The resolved config is loadable and has the overrides.
    from atrous.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(out / "config.yaml"))
    assert cfg.SOLVER.MAX_ITER == 8 and cfg.OUTPUT_DIR == str(out)

    records = run_metrics(out)
    train = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in train] == list(range(8))
    assert all(r["total_loss"] > 0 for r in train)
    final = [r for r in records if "sem_seg/mIoU" in r]
    assert final and final[-1]["iteration"] == 8 and 0.0 <= final[-1]["sem_seg/mIoU"] <= 100.0

    log = (out / "log.txt").read_text()
    assert "eta:" in log and "iter: 7" in log and "lr:" in log and "data_time:" in log
    assert "max_rss:" in log and "Using seed 0" in log
    ckpt = torch.load(out / "model_final.pth", weights_only=True)
    assert ckpt["iteration"] == 7 and "optimizer" in ckpt and "scheduler" in ckpt


def test_eval_only_reproduces_final_evaluation(
    datasets_dir: Path, trained: Path, tmp_path: Path
) -> None:
    out = trained
    trained_miou = [r for r in run_metrics(out) if "sem_seg/mIoU" in r][-1]["sem_seg/mIoU"]

    ev = tmp_path / "eval"
    proc = _train(
        datasets_dir, ev, "--eval-only", opts=["MODEL.WEIGHTS", str(out / "model_final.pth")]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (ev / "log.txt").read_text()
    assert "Evaluation results" in log
    assert f"mIoU={trained_miou:.2f}" in log
    assert not list(ev.glob("*.pth"))  # evaluation writes no checkpoint


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config-file", "configs/nope.yaml"], "does not exist"),
        (
            ["--config-file", str(QUICKSTART), "SOLVER.BASE_LRR", "0.1"],
            "Did you mean 'SOLVER.BASE_LR'",
        ),
        (["--config-file", str(QUICKSTART), "SOLVER.BASE_LR"], "KEY VALUE pairs"),
        (["--config-file", str(QUICKSTART), "SOLVER.MAX_ITER", "many"], "SOLVER.MAX_ITER"),
        ([], "--config-file"),
    ],
)
def test_bad_command_lines_fail_clearly(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_nan_loss_stops_with_clear_error(datasets_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # An absurd LR makes the first update blow the weights up, so iteration 1 has no finite loss.
    proc = _train(
        datasets_dir,
        out,
        opts=[
            "SOLVER.BASE_LR",
            "1e30",
            "SOLVER.WARMUP_ITERS",
            "0",
            "SOLVER.CHECKPOINT_PERIOD",
            "1",
        ],
    )
    assert proc.returncode == 1
    assert "Loss became infinite or NaN at iteration=" in proc.stderr
    assert "total_loss" in proc.stderr
    assert not (out / "model_final.pth").exists()
    failed_at = int(re.search(r"iteration=(\d+)", proc.stderr).group(1))
    assert failed_at >= 1
    # The checkpoint of the last iteration that had a finite loss is the one to resume from.
    last = (out / "last_checkpoint").read_text()
    assert last == f"model_{failed_at - 1:07d}.pth"
    assert torch.load(out / last, weights_only=True)["iteration"] == failed_at - 1


# A training entry point with one extra hook, as a user script would register it: it records each
# rank's final weights (only rank 0 writes the run's own files) and can slow a checkpoint save
# down so that the test can kill the process in the middle of it.
_WRAPPER = textwrap.dedent(
    """
    import os, sys, time
    import torch
    from atrous.engine import hooks, trainer
    from atrous.utils import comm

    class DumpWeights(hooks.HookBase):
        def _dump(self, tag):
            path = os.environ.get("DUMP_WEIGHTS")
            if path:
                model = getattr(self.trainer.model, "module", self.trainer.model)
                torch.save(model.state_dict(), f"{path}.{tag}.rank{comm.get_rank()}")

        def before_train(self):
            self._dump("init")

        def after_train(self):
            if self.trainer.iter >= self.trainer.max_iter:
                self._dump("final")

    _build_hooks = trainer.Trainer.build_hooks
    def build_hooks(self):
        return _build_hooks(self) + [DumpWeights()]
    trainer.Trainer.build_hooks = build_hooks

    slow = os.environ.get("SLOW_SAVE_OF")
    if slow:
        import atrous.checkpoint.checkpointer as ck
        _atomic_write = ck.atomic_write
        def slow_atomic_write(path, write):
            if os.path.basename(str(path)) != slow:
                return _atomic_write(path, write)
            def half_then_wait(f):
                import io
                buf = io.BytesIO(); write(buf); data = buf.getvalue()
                f.write(data[: len(data) // 2]); f.flush()
                open(os.environ["SAVE_STARTED"], "w").close()
                time.sleep(120)
                f.write(data[len(data) // 2 :])
            return _atomic_write(path, half_then_wait)
        ck.atomic_write = slow_atomic_write

    if __name__ == "__main__":
        from atrous.cli.train import cli

        sys.exit(cli())
    """
)


@pytest.fixture
def wrapper(tmp_path: Path) -> Path:
    path = tmp_path / "train_with_hooks.py"
    path.write_text(_WRAPPER)
    return path


@pytest.mark.slow
def test_kill_during_save_then_resume_is_bit_identical(
    datasets_dir: Path, trained: Path, tmp_path: Path, wrapper: Path
) -> None:
    opts = ["SOLVER.MAX_ITER", "8", "SOLVER.MAX_TO_KEEP", "2"]
    full = trained  # the uninterrupted run of the same length

    out = tmp_path / "killed"
    started = tmp_path / "save_started"
    cmd = [sys.executable, str(wrapper), "--config-file", str(QUICKSTART), *TINY,
           "OUTPUT_DIR", str(out), *opts]  # fmt: skip
    env = training_env(datasets_dir, SLOW_SAVE_OF="model_0000005.pth", SAVE_STARTED=str(started))
    victim = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 90
    while not started.exists():
        assert victim.poll() is None, "training ended before the save could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)

    # The interrupted save left only a temporary file; the previous checkpoint is intact.
    assert not (out / "model_0000005.pth").exists()
    assert list(out.glob(".model_0000005.pth.*.tmp"))
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    assert torch.load(out / "model_0000003.pth", weights_only=True)["iteration"] == 3

    proc = _train(datasets_dir, out, "--resume", opts=opts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming from iteration 4" in (out / "log.txt").read_text()
    a, b = _weights(full / "model_final.pth"), _weights(out / "model_final.pth")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    opt_a = torch.load(full / "model_final.pth", weights_only=True)["optimizer"]["state"]
    opt_b = torch.load(out / "model_final.pth", weights_only=True)["optimizer"]["state"]
    for k in opt_a:
        assert torch.equal(opt_a[k]["momentum_buffer"], opt_b[k]["momentum_buffer"])


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(
    datasets_dir: Path, tmp_path: Path, wrapper: Path
) -> None:
    # SyncBN (naive all-reduce on CPU), plain cross-entropy, no dropout and no random flip or
    # crop: both runs then see the same global batch of 4 and compute the same function of it.
    # float32 (the quickstart trains in bfloat16), so that the comparison can be tight.
    opts = [
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "0",
        "MODEL.RESNETS.NORM", "SyncBN", "MODEL.SEM_SEG_HEAD.NORM", "SyncBN",
        "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "cross_entropy", "MODEL.SEM_SEG_HEAD.ASPP_DROPOUT", "0.0",
        "INPUT.RANDOM_FLIP", "none", "INPUT.CROP.ENABLED", "False",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "DATASETS.TEST", "()",
        "SOLVER.AMP.ENABLED", "False", "SOLVER.CHANNELS_LAST", "False",
    ]  # fmt: skip
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"np{n}"
        env = training_env(
            datasets_dir, DUMP_WEIGHTS=str(tmp_path / f"w{n}"), ATROUS_DIST_TIMEOUT="60"
        )
        cmd = [sys.executable, str(wrapper), "--num-gpus", str(n), "--config-file",
               str(QUICKSTART), *TINY, "OUTPUT_DIR", str(out), *opts]  # fmt: skip
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=150
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[n] = [r["total_loss"] for r in run_metrics(out) if "total_loss" in r]

    def load(n: int, tag: str, rank: int) -> dict[str, torch.Tensor]:
        return torch.load(f"{tmp_path / f'w{n}'}.{tag}.rank{rank}", weights_only=True)

    w0, w1 = load(2, "final", 0), load(2, "final", 1)
    single, init = load(1, "final", 0), load(1, "init", 0)
    for key in w0:
        assert torch.equal(w0[key], w1[key]), f"ranks differ in {key}"
        assert torch.equal(load(2, "init", 0)[key], init[key])
    assert len(runs[1]) == len(runs[2]) == 3
    # Near initialisation the loss barely moves (~ln 19), so the tolerance must be tight: with
    # unsynchronised BN the losses already differ by ~2e-5 relative.
    for l1, l2 in zip(runs[1], runs[2]):
        assert l2 == pytest.approx(l1, rel=2e-6)
    # The weight updates agree: ~5% relative difference in these tiny early updates (float32
    # accumulation order of two processes against one, and hard pixel mining ranks pixels per
    # process, as in the original), while unsynchronised BN differs by ~45%.
    keys = [k for k, v in single.items() if v.is_floating_point() and "running" not in k]
    delta_1 = torch.cat([(single[k] - init[k]).flatten() for k in keys])
    delta_2 = torch.cat([(w0[k] - init[k]).flatten() for k in keys])
    assert delta_1.norm() > 0
    assert (delta_2 - delta_1).norm() <= 0.1 * delta_1.norm()
    # Only rank 0 wrote: one event file, one metrics line per iteration, one checkpoint.
    np2 = tmp_path / "np2"
    assert len(list(np2.glob("events.out.tfevents.*"))) == 1
    assert len((np2 / "metrics.json").read_text().splitlines()) == 3
    assert sorted(p.name for p in np2.glob("*.pth")) == ["model_final.pth"]


# -- the output folder: one run at a time, no silent mixing, nothing written outside ------------


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".atrous.lock"
    }


def _train_iterations(out: Path) -> list[int]:
    return [r["iteration"] for r in run_metrics(out) if "total_loss" in r]


@pytest.mark.slow
def test_busy_output_dir_is_refused_and_a_killed_runs_lock_taken_over(
    datasets_dir: Path, tmp_path: Path, wrapper: Path
) -> None:
    out = tmp_path / "busy"
    started = tmp_path / "save_started"
    cmd = [sys.executable, str(wrapper), "--config-file", str(QUICKSTART), *TINY,
           "OUTPUT_DIR", str(out)]  # fmt: skip
    env = training_env(datasets_dir, SLOW_SAVE_OF="model_0000001.pth", SAVE_STARTED=str(started))
    first = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 90
        while not started.exists():  # the first run is inside its first checkpoint save
            assert first.poll() is None, "the first run ended early"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = _train(datasets_dir, out)
        assert second.returncode == 1
        host = socket.gethostname()
        assert f"in use by another atrous run: PID {first.pid} on host {host}" in second.stderr
        assert "train_with_hooks.py" in second.stderr  # the first run's command
        assert "Traceback" not in second.stderr
        # Refused before it wrote anything there.
        assert (out / "log.txt").read_text().count("Rank of current process") == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)

    # The killed run's lock record stays behind; its PID is dead, so the resumed run takes over.
    assert (out / ".atrous.lock").exists()
    resumed = _train(datasets_dir, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Taking over the lock of {out} left by PID {first.pid}" in (out / "log.txt").read_text()
    # No checkpoint was complete, so it restarted at 0: the first run's iteration 0 is gone.
    assert _train_iterations(out) == [0, 1, 2, 3]
    assert not (out / ".atrous.lock").exists()  # released at the end


@pytest.mark.slow
def test_used_output_dir_needs_a_flag_and_overwrite_keeps_the_old_run(
    datasets_dir: Path, trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = _tree(out)

    refused = _train(datasets_dir, out)
    assert refused.returncode == 1
    assert f"OUTPUT_DIR {out} holds a previous run" in refused.stderr
    assert "--resume" in refused.stderr and "--overwrite" in refused.stderr
    assert _tree(out) == before  # not even log.txt was touched

    fresh = _train(datasets_dir, out, "--overwrite")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    (previous,) = (out / "previous").iterdir()
    assert _tree(previous) == before  # moved aside, byte for byte
    assert _train_iterations(out) == [0, 1, 2, 3]  # one run in metrics.json and in the plot
    assert (out / "training_curves.png").is_file()
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 3


@pytest.mark.slow
def test_resume_keeps_each_iteration_once_in_metrics(
    datasets_dir: Path, trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    # As if the run had been killed after the checkpoint of iteration 5 and its metrics of 6-8.
    (out / "last_checkpoint").write_text("model_0000005.pth")
    proc = _train(datasets_dir, out, "--resume", opts=["SOLVER.MAX_ITER", "8",
                                                       "SOLVER.MAX_TO_KEEP", "2"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _train_iterations(out) == list(range(8))
    assert [r["iteration"] for r in run_metrics(out) if "sem_seg/mIoU" in r] == [8]
    a, b = _weights(trained / "model_final.pth"), _weights(out / "model_final.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _dataset_yaml(datasets_dir: Path, folder: Path) -> str:
    """A dataset YAML in `folder` over the synthetic val split; returns its "path:split" name."""
    folder.mkdir()
    synthetic = datasets_dir / "synthetic"
    lines = []
    for image in sorted((synthetic / "leftImg8bit" / "val").rglob("*_leftImg8bit.png")):
        city = image.parent.name
        stem = image.name.replace("_leftImg8bit.png", "")
        label = synthetic / "gtFine" / "val" / city / f"{stem}_gtFine_labelTrainIds.png"
        lines.append(f"{image} {label}")
    (folder / "val.txt").write_text("\n".join(lines) + "\n")
    spec = {"classes": [f"class{i}" for i in range(19)], "ignore_value": 255,
            "splits": {"val": {"list": "val.txt"}}}  # fmt: skip
    (folder / "d.yaml").write_text(yaml.safe_dump(spec))
    return f"{folder / 'd.yaml'}:val"


@pytest.mark.slow
def test_dataset_yaml_by_absolute_path_writes_only_into_output_dir(
    datasets_dir: Path, tmp_path: Path
) -> None:
    name = _dataset_yaml(datasets_dir, tmp_path / "mri")
    before = _tree(tmp_path / "mri")
    out = tmp_path / "out"
    test_set = ["DATASETS.TEST", f'("{name}",)']
    proc = _train(datasets_dir, out, opts=[*test_set, "SOLVER.MAX_ITER", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _tree(tmp_path / "mri") == before and not Path(name).exists()
    (report,) = (out / "inference").glob("d.yaml_val-*/report.html")
    assert (report.parent / "report_files").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mri", "out"]

    # A folder named like the dataset (what older versions left there) does not hide it.
    Path(name, "report_files").mkdir(parents=True)
    again = _train(datasets_dir, tmp_path / "eval", "--eval-only",
                   opts=[*test_set, "MODEL.WEIGHTS", str(out / "model_final.pth")])  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Evaluation results" in (tmp_path / "eval" / "log.txt").read_text()


def test_unknown_test_dataset_fails_before_training(datasets_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _train(datasets_dir, out, opts=["DATASETS.TEST", '("no_such_dataset_val",)'])
    assert proc.returncode == 1
    assert "DATASETS.TEST: unknown dataset 'no_such_dataset_val'" in proc.stderr
    assert not out.exists()  # found by the launching process, before any run set-up
    assert not list(out.glob("*.pth")) and not (out / "metrics.json").exists()
    assert not (out / ".atrous.lock").exists()  # released on the way out


@pytest.mark.slow
def test_refusal_on_rank_0_stops_every_rank(
    datasets_dir: Path, trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    start = time.monotonic()
    proc = _train(datasets_dir, out, "--num-gpus", "2", timeout=150)
    # Rank 1 must not sit in the next collective until the process-group timeout.
    assert time.monotonic() - start < 120
    assert proc.returncode == 1
    assert f"OUTPUT_DIR {out} holds a previous run" in proc.stderr
    # Reported once, by the parent, without a traceback from either rank.
    assert proc.stderr.count("error: ") == 1 and "Traceback" not in proc.stderr


def test_bundle_of_a_training_run_records_its_final_metrics(
    datasets_dir: Path, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atrous.cli.main import main
    from atrous.inference import Predictor

    monkeypatch.setenv("ATROUS_DATASETS", str(datasets_dir))
    bundle = tmp_path / "bundle"
    weights = str(trained / "model_final.pth")
    code = main(["export", "--format", "bundle", "--config-file", str(trained / "config.yaml"),
                 "--output", str(bundle), "MODEL.WEIGHTS", weights])  # fmt: skip
    assert code == 0
    meta = json.loads((bundle / "bundle.json").read_text())
    final_miou = [r for r in run_metrics(trained) if "sem_seg/mIoU" in r][-1]["sem_seg/mIoU"]
    metrics = meta["metrics"]
    assert metrics["source"] == "inference/synthetic_sem_seg_val/sem_seg_evaluation.json"
    assert metrics["values"]["sem_seg/mIoU"] == pytest.approx(final_miou)
    assert meta["datasets"]["train"] == ["synthetic_sem_seg_train"]
    assert meta["source_weights"] == "model_final.pth"
    card = (bundle / "README.md").read_text()
    assert (
        f"| Final metrics | mIoU {final_miou:.2f}, " in card and "on synthetic_sem_seg_val" in card
    )
    predictor = Predictor(bundle)
    assert predictor.metadata.stuff_classes == tuple(meta["classes"])
    assert predictor(torch.zeros(64, 128, 3, dtype=torch.uint8).numpy()).labels.shape == (64, 128)
    # The trained model from its bundle labels a real validation image as config + weights do.
    from atrous.config import get_cfg
    from atrous.data import read_image

    cfg = get_cfg()
    cfg.merge_from_file(str(trained / "config.yaml"))
    cfg.merge_from_list(["MODEL.WEIGHTS", weights])
    photo = sorted((datasets_dir / "synthetic" / "leftImg8bit" / "val").rglob("*.png"))[0]
    image = read_image(photo, "RGB")
    np.testing.assert_array_equal(predictor(image).labels, Predictor(cfg)(image).labels)


# -- Stop signals: a real signal from outside, a checkpoint, and a bit-identical resume. --------

_STOP_OPTS = ["SOLVER.MAX_ITER", "8", "SOLVER.MAX_TO_KEEP", "2", "SOLVER.CHECKPOINT_PERIOD", "100"]
# Two processes with a global batch of 4, as `--num-gpus 2` (2 images each).
_NP2_OPTS = [*_STOP_OPTS, "SOLVER.IMS_PER_BATCH", "4"]


def _command(out: Path, *flags: str, opts: list[str] = ()) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "train_net.py"), *flags, "--config-file",
            str(QUICKSTART), *TINY, "OUTPUT_DIR", str(out), *opts]  # fmt: skip


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def _stopped_at(out: Path, sig: str) -> int:
    """The iteration a stopped run saved, checked against its log line and last_checkpoint."""
    log = (out / "log.txt").read_text()
    found = re.search(rf"Received {sig} at iteration (\d+): saved ([^\s;]+)", log)
    assert found, log[-2000:]
    it = int(found.group(1))
    assert found.group(2) == str(out / f"model_{it:07d}.pth")
    assert "resume with --resume (exit status 75)" in log
    assert (out / "last_checkpoint").read_text() == f"model_{it:07d}.pth"
    assert torch.load(out / f"model_{it:07d}.pth", weights_only=True)["iteration"] == it
    assert not (out / "model_final.pth").exists()
    return it


@pytest.fixture(scope="module")
def trained_np2(datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted 8-iteration `--num-gpus 2` run (gloo), shared."""
    out = tmp_path_factory.mktemp("trained_np2") / "run"
    proc = subprocess.run(
        _command(out, "--num-gpus", "2", opts=_NP2_OPTS),
        cwd=REPO_ROOT,
        env=training_env(datasets_dir, ATROUS_DIST_TIMEOUT="60"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_stop_signal_saves_then_resume_is_bit_identical(
    datasets_dir: Path, trained: Path, tmp_path: Path, sig: str
) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _command(out, opts=_STOP_OPTS),
        cwd=REPO_ROOT,
        env=training_env(datasets_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_iteration(out, 2, [proc])
    proc.send_signal(getattr(signal, sig))
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 75, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    assert f"Received {sig}: saving a checkpoint at the end of this iteration" in stderr
    it = _stopped_at(out, sig)
    # Signalled once iteration 2 was written: the stop is at the boundary after 2 or a later one.
    assert 2 <= it < 7
    assert "s after the signal" in (out / "log.txt").read_text()
    assert max(r["iteration"] for r in run_metrics(out)) == it  # the writers flushed up to it

    resumed = _train(datasets_dir, out, "--resume", opts=_STOP_OPTS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from iteration {it + 1}" in (out / "log.txt").read_text()
    _assert_same_weights(trained / "model_final.pth", out / "model_final.pth")


@pytest.mark.slow
def test_sigterm_to_the_parent_of_two_gloo_processes_then_resume(
    datasets_dir: Path, trained_np2: Path, tmp_path: Path
) -> None:
    # `kill PID` / `docker stop` signal only the launching process: it relays the request.
    out = tmp_path / "run"
    env = training_env(datasets_dir, ATROUS_DIST_TIMEOUT="60")
    parent = subprocess.Popen(
        _command(out, "--num-gpus", "2", opts=_NP2_OPTS),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_iteration(out, 2, [parent])
    parent.send_signal(signal.SIGTERM)
    stdout, stderr = parent.communicate(timeout=60)
    assert parent.returncode == 75, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    it = _stopped_at(out, "SIGTERM")
    assert f"[rank 0] Received SIGTERM at iteration {it}" in (out / "log.txt").read_text()

    resumed = subprocess.run(
        _command(out, "--num-gpus", "2", "--resume", opts=_NP2_OPTS),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_weights(trained_np2 / "model_final.pth", out / "model_final.pth")


def _slurm_tasks(datasets_dir: Path, out: Path, *flags: str) -> list[subprocess.Popen]:
    """Two `srun` tasks as SLURM starts them: same command, SLURM_* variables, own sessions."""
    from atrous.engine.launch import find_free_port

    port = str(find_free_port())
    procs = []
    for rank in (0, 1):
        env = training_env(
            datasets_dir,
            ATROUS_DIST_TIMEOUT="60",
            SLURM_JOB_ID="4242",
            SLURM_STEP_ID="0",
            SLURM_NTASKS="2",
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_NODEID="0",
            SLURM_JOB_NODELIST="localhost",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        # One data-loader worker each: SLURM signals every process of a task, workers included.
        cmd = _command(out, *flags, opts=[*_NP2_OPTS, "DATALOADER.NUM_WORKERS", "1"])
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    return procs


@pytest.mark.slow
def test_slurm_tasks_stop_together_and_resume_like_num_gpus_2(
    datasets_dir: Path, trained_np2: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    procs = _slurm_tasks(datasets_dir, out)
    wait_for_iteration(out, 2, procs)
    # Only rank 1's processes get it: rank 0 learns of it from the all-reduce and stops with it.
    os.killpg(procs[1].pid, signal.SIGUSR1)
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [75, 75], outs
    assert all("Traceback" not in o + e for o, e in outs)
    _stopped_at(out, "SIGUSR1")
    assert "Rank of current process: 0. World size: 2" in (out / "log.txt").read_text()

    resumed = _slurm_tasks(datasets_dir, out, "--resume")
    outs = [p.communicate(timeout=180) for p in resumed]
    assert [p.returncode for p in resumed] == [0, 0], outs
    _assert_same_weights(trained_np2 / "model_final.pth", out / "model_final.pth")


def _torchrun_agents(datasets_dir: Path, out: Path, opts: list[str]) -> list[subprocess.Popen]:
    """Two torchrun agents, one process each, meeting at a c10d rendezvous on 127.0.0.1."""
    from atrous.engine.launch import find_free_port

    endpoint = f"127.0.0.1:{find_free_port()}"
    procs = []
    for host in ("true", "false"):
        # The first agent hosts the rendezvous store, whichever binds first on a busy machine: the
        # tests kill the other one.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
               "--rdzv-conf", f"is_host={host}", "--rdzv-id", out.name,
               *_command(out, opts=opts)[1:]]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                env=training_env(datasets_dir, ATROUS_DIST_TIMEOUT="30"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        time.sleep(0.5)  # the host's store is up before its client knocks
    return procs


@pytest.mark.slow
def test_two_torchrun_agents_match_num_gpus_2(
    datasets_dir: Path, trained_np2: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    procs = _torchrun_agents(datasets_dir, out, _NP2_OPTS)
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    _assert_same_weights(trained_np2 / "model_final.pth", out / "model_final.pth")


@pytest.mark.slow
def test_killed_torchrun_agent_ends_the_other(datasets_dir: Path, tmp_path: Path) -> None:
    # The killed agent does not host the rendezvous, so only its worker can tell the others: it
    # gets SIGTERM when its agent dies, and every rank stops as on a preemption, with a
    # checkpoint. The other agent reports its stopped worker as a failure.
    out = tmp_path / "run"
    procs = _torchrun_agents(datasets_dir, out, [*_NP2_OPTS, "SOLVER.MAX_ITER", "1000"])
    wait_for_iteration(out, 2, procs)
    killed_at = time.monotonic()
    procs[1].send_signal(signal.SIGKILL)
    _, stderr = procs[0].communicate(timeout=90)
    elapsed = time.monotonic() - killed_at
    procs[1].communicate(timeout=30)
    assert procs[0].returncode not in (0, None)
    assert elapsed < 60
    assert "ChildFailedError" in stderr and "exitcode: 75" in stderr, stderr[-3000:]
    it = _stopped_at(out, "SIGTERM")
    assert it >= 3
    # No worker is left behind, the killed agent's included.
    time.sleep(1)
    assert not _processes_mentioning(str(out))


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


# Stand-ins for SLURM's commands (there is no SLURM here): srun starts 2 tasks on this machine
# with the variables srun sets, scancel --signal signals them, scontrol resolves hosts and
# records a requeue.
_SLURM_SHIMS = {
    "srun": """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
: > "$SHIM_DIR/pids"
pids=()
for r in 0 1; do
  SLURM_STEP_ID=0 SLURM_NTASKS=2 SLURM_PROCID=$r SLURM_LOCALID=$r SLURM_NODEID=0 "$@" &
  pids+=($!); echo $! >> "$SHIM_DIR/pids"
done
rc=0
for p in "${pids[@]}"; do wait $p; s=$?; [ $s -gt $rc ] && rc=$s; done
exit $rc
""",
    "scancel": """#!/bin/bash
for p in $(cat "$SHIM_DIR/pids"); do kill -"${1#--signal=}" $p; done
""",
    "scontrol": """#!/bin/bash
case $1 in show) echo localhost;; requeue) echo "$2" >> "$SHIM_DIR/requeued";; esac
""",
}


@pytest.mark.slow
def test_slurm_recipe_requeues_at_the_time_limit_and_resumes(
    datasets_dir: Path, trained_np2: Path, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in _SLURM_SHIMS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    out = tmp_path / "run"
    env = training_env(
        datasets_dir,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SHIM_DIR=str(bin_dir),
        SLURM_JOB_ID="4343",
        SLURM_JOB_NAME="atrous",
        SLURM_JOB_NODELIST="localhost",
        CONFIG=str(QUICKSTART),
        OUTPUT_DIR=str(out),
        PYTHON=sys.executable,
        PYTHONPATH=str(REPO_ROOT / "src"),
        ATROUS_DIST_TIMEOUT="60",
    )
    cmd = ["bash", str(REPO_ROOT / "tools" / "slurm" / "train.sbatch"), *TINY, *_NP2_OPTS]
    job = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for_iteration(out, 2, [job])
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 sends the batch shell
    stdout, _ = job.communicate(timeout=90)
    assert job.returncode == 75, stdout[-3000:]
    assert (bin_dir / "requeued").read_text() == "4343\n"
    assert "requeueing job 4343" in stdout
    _stopped_at(out, "SIGUSR1")

    # The requeued job runs the same script: it resumes and completes, with no further requeue.
    again = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (bin_dir / "requeued").read_text() == "4343\n"
    _assert_same_weights(trained_np2 / "model_final.pth", out / "model_final.pth")


@pytest.mark.slow
@pytest.mark.parametrize("record", ["missing", "empty", "fifo", "folder"])
def test_resume_without_a_usable_last_checkpoint_never_wipes_the_finished_run(
    datasets_dir: Path, trained: Path, tmp_path: Path, record: str
) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    spoil_last_checkpoint(out, record)
    checkpoints = {p.name: p.read_bytes() for p in out.glob("*.pth")}
    lines = (out / "metrics.json").read_text().splitlines()
    proc = _train(datasets_dir, out, "--resume",
                  opts=["SOLVER.MAX_ITER", "8", "SOLVER.MAX_TO_KEEP", "2"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the checkpoint with the largest iteration (7)" in proc.stdout
    assert "is complete (iteration 8 of SOLVER.MAX_ITER 8): nothing to train" in proc.stdout
    assert {p.name: p.read_bytes() for p in out.glob("*.pth")} == checkpoints
    assert (out / "metrics.json").read_text().splitlines() == lines


@pytest.mark.slow
def test_extending_a_finished_run_follows_the_new_schedule_to_its_final_evaluation(
    datasets_dir: Path, trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    proc = _train(datasets_dir, out, "--resume",
                  opts=["SOLVER.MAX_ITER", "12", "SOLVER.MAX_TO_KEEP", "2",
                        "SOLVER.BASE_LR", "0.5"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "math domain error" not in proc.stderr + proc.stdout
    assert _train_iterations(out) == list(range(12))
    assert [r["iteration"] for r in run_metrics(out) if "sem_seg/mIoU" in r] == [8, 12]
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 11
    warning = [line for line in proc.stdout.splitlines() if "config values are not used" in line]
    assert len(warning) == 1 and "SOLVER.BASE_LR 0.5 -> " in warning[0]
    saved = yaml.safe_load((out / "config.yaml").read_text())["SOLVER"]
    assert saved["MAX_ITER"] == 12 and saved["BASE_LR"] != 0.5
