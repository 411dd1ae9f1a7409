"""The training loop and its hooks on a toy model (real Checkpointer, real files)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from atrous.checkpoint import Checkpointer
from atrous.engine import (
    EvalHook,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
    SimpleTrainer,
    TrainingCurvePlotter,
)
from atrous.engine.events import CommonMetricPrinter, JSONWriter, TensorboardWriter
from atrous.solver import GradientClipper, WarmupPolyLR


class _Toy(nn.Module):
    """Fits y = 3x - 1; returns NaN from iteration `nan_at` on (counted in forward calls)."""

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.nan_at = nan_at
        self.calls = 0

    def forward(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        x = torch.stack([b["x"] for b in batch])
        y = torch.stack([b["y"] for b in batch])
        loss = ((self.lin(x).squeeze(1) - y) ** 2).mean()
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        self.calls += 1
        return {"loss_mse": loss}


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(8, 4, generator=g)
        y = 3 * x.sum(1) - 1
        yield [{"x": x[i], "y": y[i]} for i in range(8)]


def _trainer(model, out: Path, *, max_iter: int, period: int = 0, keep: int = 0, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = WarmupPolyLR(opt, max_iters=max_iter, warmup_iters=2, warmup_factor=0.1)
    ckpt = Checkpointer(model, save_dir=out, optimizer=opt, scheduler=sched)
    trainer = SimpleTrainer(model=model, data_loader=_data(), optimizer=opt, **kw)
    metrics = out / "metrics.json"
    out.mkdir(parents=True, exist_ok=True)
    evals = itertools.count()
    trainer.register_hooks(
        [
            IterationTimer(),
            LRScheduler(sched),
            PeriodicCheckpointer(ckpt, period=period, max_iter=max_iter, max_to_keep=keep),
            EvalHook(5, lambda: {"sem_seg": {"mIoU": float(next(evals))}}),
            PeriodicWriter(
                [
                    CommonMetricPrinter(max_iter),
                    JSONWriter(str(metrics)),
                    TensorboardWriter(str(out)),
                ],
                period=2,
            ),
            TrainingCurvePlotter(str(metrics), str(out / "training_curves.png")),
        ]
    )
    return trainer, sched


def test_loop_learns_and_writes_everything(tmp_path: Path, caplog) -> None:
    caplog.set_level("INFO")
    model = _Toy()
    trainer, sched = _trainer(model, tmp_path, max_iter=12, period=4, keep=2)
    trainer.train(0, 12)
    assert trainer.iter == 12
    losses = trainer.storage.history("total_loss").values
    assert len(losses) == 12
    assert sum(v for v, _ in losses[-3:]) < sum(v for v, _ in losses[:3]) / 4

    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    its = [r["iteration"] for r in records]
    assert its == sorted(its) and its[-1] == 12  # final evaluation recorded after the last step
    train_records = [r for r in records if "total_loss" in r]
    assert {"loss_mse", "total_loss", "lr", "time", "data_time"} <= set(train_records[0])
    # mIoU from the periodic (after iteration 4 and 9) and final evaluations.
    assert [r["sem_seg/mIoU"] for r in records if "sem_seg/mIoU" in r] == [0.0, 1.0, 2.0]
    # The LR logged for iteration i is the schedule's value at i.
    for r in train_records:
        assert r["lr"] == pytest.approx(0.05 * sched.factor_at(r["iteration"]))

    assert list(tmp_path.glob("events.out.tfevents.*"))
    png = tmp_path / "training_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Periodic checkpoints after iterations 3, 7, 11; only the last two kept; plus final.
    names = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert names == ["model_0000007.pth", "model_0000011.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["iteration"] == 11
    console = "\n".join(r.getMessage() for r in caplog.records)
    assert "eta:" in console and "iter: 11" in console and "lr:" in console
    assert "max_rss:" in console or "max_mem:" in console


def test_nan_loss_stops_with_iteration_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    model = _Toy(nan_at=5)
    trainer, _ = _trainer(model, tmp_path, max_iter=20, period=2)
    with pytest.raises(FloatingPointError, match=r"iteration=5.*loss_mse"):
        trainer.train(0, 20)
    assert trainer.iter == 5
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not (tmp_path / "model_final.pth").exists()
    saved = torch.load(tmp_path / "model_0000003.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    # No update was made from the NaN loss.
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_periodic_checkpoints_also_rotate_the_files_an_earlier_run_left(tmp_path: Path) -> None:
    # What a resumed run finds: numbered files of its predecessor, counted like its own.
    (tmp_path / "model_0000000.pth").write_bytes(b"old")
    trainer, _ = _trainer(_Toy(), tmp_path, max_iter=10, period=2, keep=2)
    trainer.train(0, 10)
    names = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert names == ["model_0000007.pth", "model_0000009.pth", "model_final.pth"]
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 9


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_amp_steps(tmp_path: Path, dtype: torch.dtype) -> None:
    model = _Toy()
    scaler = torch.amp.GradScaler("cpu") if dtype == torch.float16 else None
    trainer, _ = _trainer(
        model,
        tmp_path,
        max_iter=24,
        amp_dtype=dtype,
        grad_scaler=scaler,
        grad_clipper=GradientClipper(clip_type="norm", clip_value=10.0),
    )
    trainer.train(0, 24)
    losses = [v for v, _ in trainer.storage.history("total_loss").values]
    assert all(torch.isfinite(torch.tensor(losses)))
    # float16 skips the first steps while the scaler finds a scale without overflow.
    assert sum(losses[-4:]) < sum(losses[:4]) / 4


# ---------------------------------------------------------------------------------------------
# The config-driven Trainer, on the synthetic scenes with a model shrunk to seconds.
# ---------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def _readme_python_block(heading: str) -> str:
    section = (REPO / "README.md").read_text(encoding="utf-8").split(f"\n### {heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model_final.pth", weights_only=True)["model"]


def test_readme_custom_mapper_trainer_trains_with_its_mapper(tmp_path: Path, tiny_run_cfg) -> None:
    cfg = tiny_run_cfg(tmp_path / "run")
    namespace = {"cfg": cfg}
    exec(compile(_readme_python_block("Custom training parts"), "README.md", "exec"), namespace)
    assert torch.load(tmp_path / "run" / "model_final.pth", weights_only=True)["iteration"] == 3

    # The override is what feeds the samples: about half of them come out grey.
    loader = namespace["MyTrainer"].build_train_loader(cfg, start_iter=0, seed=0)
    assert type(loader.dataset.mapper).__name__ == "GreyscaleMapper"
    images = [d["image"] for batch in itertools.islice(iter(loader), 4) for d in batch]
    grey = [bool((im[0] == im[1]).all() and (im[1] == im[2]).all()) for im in images]
    assert any(grey) and not all(grey)


def test_test_builds_its_evaluators_through_the_seam(tmp_path: Path, tiny_run_cfg) -> None:
    from atrous.engine import Trainer
    from atrous.evaluation import build_evaluator
    from atrous.modeling import build_model

    seen = []

    class CountingTrainer(Trainer):
        @classmethod
        def build_evaluators(cls, cfg, dataset_name, output_folder):
            seen.append((dataset_name, Path(output_folder).name))
            return build_evaluator(cfg, dataset_name, output_folder)

    cfg = tiny_run_cfg(tmp_path / "run")
    cfg.DATASETS.TEST = ("synthetic_sem_seg_val",)
    results = CountingTrainer.test(cfg, build_model(cfg))
    assert seen == [("synthetic_sem_seg_val", "synthetic_sem_seg_val")]
    assert "sem_seg" in results, results


def test_resume_record_per_rank_and_previous_layout_resumes_bit_identically(
    tmp_path: Path, tiny_run_cfg
) -> None:
    from atrous.engine import Trainer

    full = tmp_path / "full"
    trainer = Trainer(tiny_run_cfg(full))
    trainer.resume_or_load(resume=False)
    trainer.train()
    saved = torch.load(full / "model_0000001.pth", weights_only=True)
    # The RNG states are stored once, in the rank's resume record.
    assert "rng_state" not in saved and "data_position" not in saved
    assert [sorted(r) for r in saved["ranks"]] == [["data_seed", "rng"]]
    assert saved["ranks"][0]["data_seed"] == 0

    # The layout before: rank 0's states also in the file, a data position in every record.
    old = dict(saved, rng_state=saved["ranks"][0]["rng"])
    old["ranks"] = [dict(r, data_position=2) for r in saved["ranks"]]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    torch.save(old, resumed / "model_0000001.pth")
    (resumed / "last_checkpoint").write_text("model_0000001.pth")
    torch.manual_seed(123)  # whatever state this process is in, the record's comes back
    trainer = Trainer(tiny_run_cfg(resumed))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    trainer.train()
    expected, got = _final_weights(full), _final_weights(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_an_optimizer_that_misses_trainable_parameters_stops_before_the_first_step(
    tmp_path: Path, tiny_run_cfg
) -> None:
    from atrous.engine import Trainer
    from atrous.solver import OptimizerCoverageError, build_optimizer

    class HeadlessOptimizerTrainer(Trainer):
        @classmethod
        def build_optimizer(cls, cfg, model):
            optimizer = build_optimizer(cfg, model)
            # What a module swapped after the optimizer was built amounts to.
            model.sem_seg_head.predictor = nn.Conv2d(
                model.sem_seg_head.predictor.in_channels, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 1
            )
            return optimizer

    out = tmp_path / "run"
    trainer = HeadlessOptimizerTrainer(tiny_run_cfg(out))
    trainer.resume_or_load(resume=False)
    with pytest.raises(OptimizerCoverageError, match=r"sem_seg_head\.predictor\.weight"):
        trainer.train()
    assert not list(out.glob("model_*.pth"))  # no step, no checkpoint


def test_ddp_arguments_name_the_gpu_the_model_is_on_not_a_rank() -> None:
    from atrous.engine.trainer import ddp_arguments

    assert ddp_arguments(torch.device("cuda", 3))["device_ids"] == [3]
    assert ddp_arguments(torch.device("cuda"))["device_ids"] == [0]
    cpu = ddp_arguments(torch.device("cpu"))
    assert "device_ids" not in cpu
    assert cpu.get("forward_sync_buffers", cpu.get("broadcast_buffers")) is False


@pytest.mark.parametrize(
    ("dtype", "device", "scaled"),
    [
        (torch.float16, "cuda", True),
        (torch.float16, "cpu", True),
        (torch.bfloat16, "cuda", False),
        (None, "cuda", False),
    ],
)
def test_grad_scaler_only_for_float16(dtype, device, scaled) -> None:
    import warnings

    from atrous.engine.trainer import grad_scaler_for

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CUDA scaler on a machine without CUDA disables itself
        scaler = grad_scaler_for(dtype, torch.device(device))
    assert (scaler is not None) is scaled
    if scaler is not None:
        assert scaler._device == device
