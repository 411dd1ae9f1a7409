"""The training loop: a small step (load, forward, backward, update) and hooks for the rest.

`SimpleTrainer` is the loop; `Trainer` builds one from a config (model, optimizer, scheduler,
data, checkpointing, evaluation, writers) the way detectron2's ``DefaultTrainer`` does, and adds
exact resume: model, optimizer, scheduler, grad scaler, iteration, every rank's RNG states and the
data stream's seed.
"""

from __future__ import annotations

import inspect
import logging
import os
import reprlib
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from atrous.checkpoint.rng import capture_rng_state, restore_rng_state
from atrous.layers.norm import NaiveSyncBatchNorm, convert_sync_batchnorm
from atrous.solver.optimizer import check_optimizer_covers
from atrous.utils import comm

from . import hooks as hooks_mod
from . import preemption
from .best_checkpoint import BestCheckpointer, BestMetricState
from .events import CommonMetricPrinter, EventStorage, JSONWriter, TensorboardWriter
from .preemption import StopSignals, TrainingPreempted

__all__ = [
    "SimpleTrainer",
    "Trainer",
    "TrainerBase",
    "check_config_datasets",
    "ddp_arguments",
    "grad_scaler_for",
]

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class TrainerBase:
    """Runs registered hooks around `run_step` for iterations ``[start_iter, max_iter)``.

    After a completed run ``self.iter == max_iter``; after a failure it is the failing iteration;
    after a stop signal (`TrainingPreempted`) it is the first iteration that did not run. A hook
    that sets `stop_reason` (early stopping) ends the run after the current step: it is logged,
    ``self.iter`` is the first iteration that did not run, and the run counts as finished.
    """

    def __init__(self) -> None:
        self._hooks: list[hooks_mod.HookBase] = []
        self.iter = 0
        self.start_iter = 0
        self.max_iter = 0
        self.storage = EventStorage()
        self.stop_reason: str | None = None
        # What ended the last `train` early (a stop signal's TrainingPreempted, an error).
        self.exception: BaseException | None = None

    def register_hooks(self, hooks: Iterable[hooks_mod.HookBase | None]) -> None:
        for hook in hooks:
            if hook is None:
                continue
            hook.trainer = self
            self._hooks.append(hook)

    def train(self, start_iter: int, max_iter: int) -> None:
        logger.info("Starting training from iteration %d", start_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        self.storage = EventStorage(start_iter)
        self.stop_reason = None
        self.exception = None
        try:
            for h in self._hooks:
                h.before_train()
            for self.iter in range(start_iter, max_iter):
                self.storage.iter = self.iter
                for h in self._hooks:
                    h.before_step()
                self.run_step()
                for h in self._hooks:
                    h.after_step()
                if self.stop_reason:
                    logger.info("Training ends: %s", self.stop_reason)
                    self.iter += 1
                    break
            else:
                # Tells after_train hooks that the run completed.
                self.iter = max_iter
                self.storage.iter = max_iter
        except TrainingPreempted as stop:
            self.exception = stop
            raise  # a requested stop, already logged: no traceback
        except Exception as error:
            self.exception = error
            logger.exception("Exception during training at iteration %d:", self.iter)
            raise
        finally:
            for h in self._hooks:
                h.after_train()

    def run_step(self) -> None:
        raise NotImplementedError


class SimpleTrainer(TrainerBase):
    """One step = next batch, forward, backward, (clip), optimizer step.

    Args:
        model: returns a dict of scalar losses in train mode (DDP-wrapped in multi-process runs).
        data_loader: an iterator of batches (list of dicts) that never ends.
        optimizer: the optimizer.
        grad_clipper: called with the parameters after backward (after unscaling with AMP).
        amp_dtype: autocast dtype (torch.float16 or torch.bfloat16), or None for fp32.
        grad_scaler: a `torch.amp.GradScaler`, used with float16.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        data_loader: Iterator[Any],
        optimizer: torch.optim.Optimizer,
        grad_clipper: Any = None,
        amp_dtype: torch.dtype | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        super().__init__()
        model.train()
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.grad_clipper = grad_clipper
        self.amp_dtype = amp_dtype
        self.grad_scaler = grad_scaler
        self._device_type = _device_type(model)

    def run_step(self) -> None:
        start = time.perf_counter()
        data = next(self.data_loader)
        data_time = time.perf_counter() - start

        with torch.autocast(
            self._device_type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(loss_dict.values())

        # Checked (and averaged over ranks) before backward, so that every rank stops together
        # and no update is made from a non-finite loss.
        values = self._reduce_losses(loss_dict, losses)

        self.optimizer.zero_grad(set_to_none=True)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            if self.grad_clipper is not None:
                self.grad_scaler.unscale_(self.optimizer)
                self.grad_clipper(params)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            losses.backward()
            if self.grad_clipper is not None:
                self.grad_clipper(params)
            self.optimizer.step()

        self.storage.put_scalar("data_time", data_time)
        self.storage.put_scalars(**values)

    def _reduce_losses(
        self, loss_dict: Mapping[str, torch.Tensor], total: torch.Tensor
    ) -> dict[str, float]:
        names = [*loss_dict.keys(), "total_loss"]
        stacked = torch.stack(
            [v.detach().float() for v in loss_dict.values()] + [total.detach().float()]
        )
        if comm.is_distributed():
            stacked = (
                comm.all_reduce_sum(stacked.to(comm.collective_device())) / comm.get_world_size()
            )
        values = dict(zip(names, stacked.tolist()))
        if not all(np.isfinite(v) for v in values.values()):
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={self.iter}! "
                f"losses = {values}. Training stopped; the last checkpoint in the output "
                "directory is the last good state (lower SOLVER.BASE_LR, enable "
                "SOLVER.CLIP_GRADIENTS, or check the data)."
            )
        return values


def _device_type(model: nn.Module) -> str:
    try:
        return next(model.parameters()).device.type
    except StopIteration:
        return "cpu"


# ---------------------------------------------------------------------------------------------
# Config-driven trainer.
# ---------------------------------------------------------------------------------------------


class Trainer:
    """Everything a training run needs, built from a config.

    Usage (what `atrous train` does)::

        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()

    The parts come from classmethods a subclass may override, as in detectron2's
    ``DefaultTrainer``: `build_model`, `build_optimizer`, `build_lr_scheduler`,
    `build_train_loader` (e.g. for a custom mapper), `build_evaluators` (used by `test` and the
    evaluations during training) and `build_hooks`.

    Args:
        cfg: the resolved config. Uses MODEL.*, SOLVER.*, DATASETS.*, TRACKING.*, TEST.EVAL_PERIOD,
            OUTPUT_DIR and LOG_PERIOD.
    """

    def __init__(self, cfg: Any) -> None:
        from atrous.solver import build_gradient_clipper

        from .output_dir import check_checkpoint_space, on_main_process

        self.cfg = cfg
        # A bad dataset name fails now, not when the first evaluation (or the end) comes.
        check_config_datasets(cfg, test=True)
        model = self.build_model(cfg)
        if cfg.SOLVER.CHANNELS_LAST:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        logger.info("Training on %s", getattr(model, "device", "?"))
        self.optimizer = self.build_optimizer(cfg, model)
        if cfg.OUTPUT_DIR:
            on_main_process(lambda: self._prepare_output_dir(check_checkpoint_space), None)
        self.scheduler = self.build_lr_scheduler(cfg, self.optimizer)
        self.grad_clipper = build_gradient_clipper(cfg)
        self.amp_dtype = _amp_dtype(cfg)
        self.grad_scaler = grad_scaler_for(
            self.amp_dtype, getattr(model, "device", torch.device("cpu"))
        )
        best = cfg.SOLVER.BEST_CHECKPOINT
        # Registered with the checkpointer, so that every checkpoint holds it (exact resume).
        self.best_state = (
            BestMetricState(best.METRIC, best.MODE, float(cfg.SOLVER.EARLY_STOP.MIN_DELTA))
            if best.METRIC
            else None
        )
        self.checkpointer = self._build_checkpointer()
        self.start_iter = 0
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self._loaded_record: Mapping[str, Any] | None = None
        self._resumed = False
        self._data_seed: int | None = None
        self._trainer: SimpleTrainer | None = None
        self._stop_signals = StopSignals()

    # -- the parts: override these to change one ---------------------------------------------

    @classmethod
    def build_model(cls, cfg: Any) -> nn.Module:
        """The segmentor of MODEL.META_ARCHITECTURE (`atrous.modeling.build_model`), its loss
        weighted by MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS (`resolve_class_weights`)."""
        from atrous.modeling import build_model

        from .class_weights import resolve_class_weights

        return build_model(cfg, class_weights=resolve_class_weights(cfg))

    @classmethod
    def build_optimizer(cls, cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
        """SOLVER.OPTIMIZER over `model`'s parameters (`atrous.solver.build_optimizer`)."""
        from atrous.solver import build_optimizer

        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(
        cls, cfg: Any, optimizer: torch.optim.Optimizer
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """SOLVER.LR_SCHEDULER_NAME for `optimizer` (`atrous.solver.build_lr_scheduler`)."""
        from atrous.solver import build_lr_scheduler

        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: Any, *, start_iter: int, seed: int) -> Iterable[Any]:
        """The infinite training loader (`atrous.data.build_train_loader`).

        An override must pass `start_iter` and `seed` on: together they make the first batch the
        one an uninterrupted run sees at `start_iter`, which is what exact resume rests on. To
        change what a sample becomes, pass ``mapper=`` (a callable ``(record, rng) -> dict``
        drawing its randomness from `rng` only).

        Args:
            cfg: the config.
            start_iter: the first iteration this loader feeds.
            seed: the stream seed (`atrous.data.train_data_seed`, or the checkpoint's).
        """
        from atrous.data import build_train_loader

        return build_train_loader(cfg, start_iter=start_iter, seed=seed)

    @classmethod
    def build_evaluators(cls, cfg: Any, dataset_name: str, output_folder: str) -> Any:
        """The evaluator of one test dataset (`atrous.evaluation.build_evaluator`); `test` and
        the evaluations during training build theirs here."""
        from atrous.evaluation import build_evaluator

        return build_evaluator(cfg, dataset_name, output_folder)

    def _prepare_output_dir(self, check_checkpoint_space: Any) -> None:
        # `default_setup` has made it for a command-line run; a script may not have called that.
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        check_checkpoint_space(self.cfg.OUTPUT_DIR, self.model, self.optimizer)

    def _build_checkpointer(self) -> Any:
        from atrous.checkpoint import Checkpointer

        checkpointables: dict[str, Any] = {}
        if self.grad_scaler is not None:
            checkpointables["grad_scaler"] = self.grad_scaler
        if self.best_state is not None:
            checkpointables["best_metric"] = self.best_state
        return Checkpointer(
            self.model,
            save_dir=self.cfg.OUTPUT_DIR,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            # Every rank's RNG states go into its own resume record (`_resume_record`).
            rng_states=False,
            **checkpointables,
        )

    # -- set-up ----------------------------------------------------------------------------

    def resume_or_load(self, resume: bool = True) -> None:
        """With `resume` and a run in OUTPUT_DIR, continue it; else load MODEL.WEIGHTS.

        Resuming restores the model, optimizer, scheduler (and grad scaler), the iteration, the
        data stream's seed, and this rank's RNG states. A checkpoint written by a different
        number of processes resumes everything but the RNG states (with a warning). Which
        checkpoint: see `Checkpointer.find_resume_file`; a run with checkpoints is resumed or
        refused, never restarted from iteration 0.

        Everything is loaded and checked before anything in OUTPUT_DIR changes. The schedule
        follows this config (a larger SOLVER.MAX_ITER extends the run along the new curve); the
        optimizer's hyper-parameters are the checkpoint's, as in detectron2, so SOLVER values the
        config changes there are named in one warning, and on rank 0 ``config.yaml`` is written
        with the values the run really uses.

        A checkpoint holds ``ranks``: one resume record per rank, ``{"rng": ..., "data_seed":
        ...}``, gathered when it is saved. Files written before the Checkpointer stopped storing
        rank 0's states a second time (``rng_state``) or that carry a ``data_position`` resume
        the same way; both entries are ignored.

        Raises:
            CheckpointError: OUTPUT_DIR holds checkpoints but none can be resumed, or the
                checkpoint's iteration or resume records are malformed.
            ConfigError: SOLVER.MAX_ITER ends before the checkpoint's iteration.
        """
        from atrous.checkpoint.errors import CorruptCheckpointError
        from atrous.config import ConfigError

        extra = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume) or {}
        # A resumed run rewrites metrics.json from its start iteration on.
        self._resumed = bool(resume)
        if "iteration" not in extra:
            self.start_iter = 0
            if resume:
                self._save_config({})
            return
        path = getattr(self.checkpointer.last_report, "path", "") or "the checkpoint"
        start_iter = int(extra["iteration"]) + 1
        if start_iter > self.max_iter:
            raise ConfigError(
                f"{path} is at iteration {start_iter - 1}, past SOLVER.MAX_ITER "
                f"{self.max_iter}: a resumed run only moves forward. Pass SOLVER.MAX_ITER of at "
                f"least {start_iter} to continue it, or evaluate it with --eval-only --resume."
            )
        ranks = extra.get("ranks")
        if ranks is not None:
            problem = _check_resume_records(ranks)
            if problem:
                raise CorruptCheckpointError(
                    f"{path}: its 'ranks' entry (the per-process resume records) {problem}; the "
                    "file is damaged or was not written by atrous. Nothing was changed; resume "
                    "from another checkpoint by naming it in last_checkpoint."
                )
        self.start_iter = start_iter
        if ranks:
            # The stream seed is shared by all ranks; with SEED < 0 it was drawn at random.
            if ranks[0].get("data_seed") is not None:
                self._data_seed = int(ranks[0]["data_seed"])
            if len(ranks) != comm.get_world_size():
                logger.warning(
                    "The checkpoint was saved by %d processes, this run has %d: the model, "
                    "optimizer and schedule resume exactly, the RNG and data order do not.",
                    len(ranks),
                    comm.get_world_size(),
                )
            else:
                self._loaded_record = ranks[comm.get_rank()]
        self._save_config(self._unhonoured_overrides())
        logger.info("Resuming from iteration %d", self.start_iter)

    def _unhonoured_overrides(self) -> dict[str, Any]:
        """SOLVER values of the config that the loaded optimizer state replaced, logged once."""
        from atrous.solver import solver_values_in_use

        base_lrs = getattr(self.scheduler, "base_lrs", None) or [
            g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups
        ]
        in_use = solver_values_in_use(self.cfg, self.model, self.optimizer, list(base_lrs))
        if in_use:
            logger.warning(
                "A resumed run keeps the optimizer settings of its checkpoint (as detectron2 "
                "does), so these config values are not used: %s. config.yaml records the values "
                "in use; to change them, start a new run from the checkpoint's weights "
                "(MODEL.WEIGHTS, without --resume).",
                ", ".join(f"{k} {self.cfg.value_at(k)!r} -> {v!r}" for k, v in in_use.items()),
            )
        return in_use

    def _save_config(self, in_use: Mapping[str, Any]) -> None:
        """Write OUTPUT_DIR/config.yaml (rank 0) with the values a resumed run really uses."""
        if not self.cfg.OUTPUT_DIR or not comm.is_main_process():
            return
        from atrous.utils.file_io import atomic_write_text

        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.merge_from_list([item for pair in in_use.items() for item in pair])
        cfg.freeze()
        path = os.path.join(self.cfg.OUTPUT_DIR, "config.yaml")
        atomic_write_text(path, cfg.dump())
        logger.info("Full config saved to %s", os.path.abspath(path))

    def _resume_record(self) -> dict[str, Any]:
        """This rank's resume record: its RNG states and the data stream's seed.

        The stream's position needs no record: it is the checkpoint's iteration.
        """
        return {"rng": capture_rng_state(), "data_seed": self._data_seed}

    def _wrap_model(self) -> nn.Module:
        model = self.model
        if comm.get_world_size() <= 1:
            return model
        if model.device.type == "cuda":
            naive = sum(isinstance(m, NaiveSyncBatchNorm) for m in model.modules())
            model = convert_sync_batchnorm(model)
            if naive:
                logger.info("SyncBN: %d layers run as nn.SyncBatchNorm (NCCL)", naive)
        return nn.parallel.DistributedDataParallel(model, **ddp_arguments(model.device))

    def _data_iterator(self) -> Iterator[Any]:
        """The training batches from `start_iter` on, exactly those of an uninterrupted run.

        The loader's sampler starts at the stream position of `start_iter` and every sample's
        augmentation is seeded by its position, so nothing needs replaying. The stream seed is
        the checkpoint's (a run with SEED < 0 drew it at random).
        """
        from atrous.data import train_data_seed

        if self._data_seed is None:
            self._data_seed = train_data_seed(self.cfg)
        return iter(
            self.build_train_loader(self.cfg, start_iter=self.start_iter, seed=self._data_seed)
        )

    def build_hooks(self) -> list[hooks_mod.HookBase]:
        cfg = self.cfg
        checkpointer = hooks_mod.PeriodicCheckpointer(
            self.checkpointer,
            period=int(cfg.SOLVER.CHECKPOINT_PERIOD),
            max_iter=self.max_iter,
            max_to_keep=int(cfg.SOLVER.MAX_TO_KEEP),
            extra_state=self._resume_record,
        )
        out: list[hooks_mod.HookBase] = [
            # First, so that its check sees every hook done with the previous step.
            hooks_mod.PreemptionCheckpointer(self._stop_signals, checkpointer),
            hooks_mod.IterationTimer(),
            hooks_mod.LRScheduler(self.scheduler),
        ]
        # Evaluation comes before the checkpoint of the same iteration, so that the checkpoint
        # holds what the evaluation decided (best value, early-stopping count): a run resumed
        # from it neither repeats nor misses an evaluation.
        if cfg.DATASETS.TEST:
            out.append(
                hooks_mod.EvalHook(int(cfg.TEST.EVAL_PERIOD), self._evaluate_during_training)
            )
        if self.best_state is not None:
            from atrous.checkpoint import Checkpointer

            out.append(
                BestCheckpointer(
                    self.best_state,
                    Checkpointer(self.model, save_dir=cfg.OUTPUT_DIR, rng_states=False),
                    patience=int(cfg.SOLVER.EARLY_STOP.PATIENCE),
                    save_final=lambda: checkpointer.save("model_final", self.max_iter - 1),
                )
            )
        out.append(checkpointer)
        if comm.is_main_process():
            metrics = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
            out.append(hooks_mod.PeriodicWriter(self.build_writers(), period=int(cfg.LOG_PERIOD)))
            out.append(
                hooks_mod.TrainingCurvePlotter(
                    metrics, os.path.join(cfg.OUTPUT_DIR, "training_curves.png")
                )
            )
            tracking = self.build_tracking_hook()
            if tracking is not None:
                out.append(tracking)  # last: it uploads what the hooks before it wrote
        return out

    def build_tracking_hook(self) -> hooks_mod.HookBase | None:
        """The MLflow / W&B hook of TRACKING.BACKENDS (rank 0 only), or None."""
        from .tracking import build_tracking_hook

        return build_tracking_hook(self.cfg, resumed=self._resumed, start_iter=self.start_iter)

    def build_writers(self) -> list[Any]:
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        writers: list[Any] = [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(
                os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"),
                start_iter=self.start_iter if self._resumed else None,
            ),
        ]
        if "tensorboard" in self.cfg.TRACKING.BACKENDS:
            writers.append(TensorboardWriter(self.cfg.OUTPUT_DIR))
        return writers

    # -- running ---------------------------------------------------------------------------

    def train(self) -> Mapping[str, Any]:
        """Train from `start_iter` to SOLVER.MAX_ITER; returns the last evaluation's results.

        SIGTERM, SIGINT and SIGUSR1 (caught while this runs, in the main thread; the previous
        handlers are restored afterwards) stop every rank after the same iteration, with a
        checkpoint that ``resume_or_load(resume=True)`` continues from exactly.

        Raises:
            TrainingPreempted: a stop signal ended the run early (the checkpoint is saved).
        """
        self._stop_signals = StopSignals(
            # One announcement per job: rank 0's, or the spawning parent's.
            announce=comm.is_main_process() and not preemption.has_launcher_request()
        )
        # Installed before the data loader forks its workers, which then ignore the signals
        # (SLURM signals every process of the job) instead of dying under the training process.
        with self._stop_signals:
            return self._train()

    def _train(self) -> Mapping[str, Any]:
        if self._resumed and self.start_iter >= self.max_iter:
            # A requeued or repeated --resume of a finished run: its checkpoints, metrics and
            # final evaluation stand as they are.
            logger.info(
                "The run in %s is complete (iteration %d of SOLVER.MAX_ITER %d): nothing to "
                "train. Pass a larger SOLVER.MAX_ITER to extend it.",
                self.cfg.OUTPUT_DIR,
                self.start_iter,
                self.max_iter,
            )
            return {}
        patience = int(self.cfg.SOLVER.EARLY_STOP.PATIENCE)
        if self._resumed and self.best_state is not None and self.best_state.exhausted(patience):
            logger.info(
                "The run in %s stopped early at iteration %d: %s has not improved for %d "
                "evaluations (SOLVER.EARLY_STOP.PATIENCE %d); nothing to train. Pass a larger "
                "SOLVER.EARLY_STOP.PATIENCE to continue it.",
                self.cfg.OUTPUT_DIR,
                self.start_iter - 1,
                self.best_state.metric,
                self.best_state.evaluations_without_improvement,
                patience,
            )
            return {}
        data = self._data_iterator()
        if self._loaded_record is not None:
            restore_rng_state(self._loaded_record["rng"])
        model = self._wrap_model()
        # Once, before the first step: a parameter the optimizer lacks would never be trained.
        check_optimizer_covers(model, self.optimizer)
        trainer = SimpleTrainer(
            model=model,
            data_loader=data,
            optimizer=self.optimizer,
            grad_clipper=self.grad_clipper,
            amp_dtype=self.amp_dtype,
            grad_scaler=self.grad_scaler,
        )
        trainer.register_hooks(self.build_hooks())
        self._trainer = trainer
        trainer.train(self.start_iter, self.max_iter)
        results: Mapping[str, Any] = {}
        for h in trainer._hooks:
            if isinstance(h, hooks_mod.EvalHook):
                results = h.latest_results
        return results

    def _evaluate_during_training(self) -> Mapping[str, Any]:
        # Evaluation must not change the training's random sequence: a run resumed from the
        # checkpoint written just before an evaluation would otherwise diverge.
        rng = capture_rng_state()
        try:
            return self.test(self.cfg, self.model)
        finally:
            self.model.train()
            restore_rng_state(rng)

    @classmethod
    def test(cls, cfg: Any, model: nn.Module) -> dict[str, Any]:
        """Evaluate `model` on every dataset in DATASETS.TEST.

        Returns:
            ``{dataset_name: {"sem_seg": {"mIoU": ..., ...}}}`` for several datasets, or the
            single dataset's result dict when there is one (as detectron2 does).
        """
        from atrous.evaluation import evaluate_datasets
        from atrous.inference import build_inference_model

        # Names were resolved at start (`check_config_datasets`); evaluate_datasets builds every
        # loader and evaluator before the first inference, so a bad file still fails at once.
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference")
        results = evaluate_datasets(
            cfg,
            build_inference_model(cfg, model),
            list(cfg.DATASETS.TEST),
            output_dir,
            evaluator_for=cls.build_evaluators,
        )
        if comm.is_main_process():
            for name, result in results.items():
                logger.info("Evaluation results for %s: %s", name, _brief(result))
        if len(results) == 1:
            return next(iter(results.values()))
        return results


def check_config_datasets(
    cfg: Any, *, train: bool = True, test: bool = True, records: bool = True
) -> None:
    """Resolve DATASETS.TRAIN (metadata) and DATASETS.TEST (metadata and files) up front.

    The training loader reads the training records right away; the test records are otherwise
    first read at the first evaluation, possibly hours in. ``records=False`` checks names and
    class counts only (what the launching process does before it starts any worker).

    Raises:
        DatasetError: an unknown name, a YAML file that does not parse or missing files, naming
            the config key.
        ConfigError: a class count other than MODEL.SEM_SEG_HEAD.NUM_CLASSES.
    """
    from atrous.data import check_datasets

    num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    if test:
        check_datasets(
            cfg.DATASETS.TEST, key="DATASETS.TEST", num_classes=num_classes, records=records
        )
    if train:
        check_datasets(
            cfg.DATASETS.TRAIN, key="DATASETS.TRAIN", num_classes=num_classes, records=False
        )


def ddp_arguments(device: torch.device) -> dict[str, Any]:
    """The keyword arguments of ``DistributedDataParallel`` for a model on `device`.

    ``device_ids`` is the GPU the model is on (the launcher's choice for this process, see
    `atrous.utils.devices.gpu_index_for_process`), not a rank; CPU models get none. Buffers are
    not re-broadcast at every forward: synchronised BN keeps them equal across ranks (the flag
    was renamed in newer torch).
    """
    kwargs: dict[str, Any] = {}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters:
        kwargs["forward_sync_buffers"] = False
    else:
        kwargs["broadcast_buffers"] = False
    if device.type == "cuda":
        kwargs["device_ids"] = [device.index if device.index is not None else 0]
    return kwargs


def grad_scaler_for(amp_dtype: torch.dtype | None, device: torch.device) -> Any:
    """A ``GradScaler`` for float16 autocast on `device` (its loss scaling keeps small gradients
    from underflowing); None for float32 and bfloat16, whose range needs none."""
    if amp_dtype != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def _check_resume_records(ranks: Any) -> str:
    """What is wrong with a checkpoint's ``ranks`` entry ("" when nothing is).

    Each record must be a dict with an ``rng`` state that can be restored (tried, then the
    current state put back) and a ``data_seed`` that is an integer or None.
    """
    if not isinstance(ranks, list | tuple) or not ranks:
        return f"is {type(ranks).__name__} {reprlib.repr(ranks)}, not a non-empty list"
    for i, record in enumerate(ranks):
        if not isinstance(record, Mapping):
            return f"holds a {type(record).__name__} at position {i}, not a dict"
        seed = record.get("data_seed")
        if seed is not None and (type(seed) is not int or not 0 <= seed < 2**63):
            return f"has the data_seed {reprlib.repr(seed)} at position {i}, not an integer"
        if "rng" not in record:
            return f"has no 'rng' state at position {i}"
        current = capture_rng_state()
        try:
            restore_rng_state(record["rng"])
        except Exception as exc:
            return f"has a malformed 'rng' state at position {i} ({type(exc).__name__})"
        finally:
            restore_rng_state(current)
    return ""


def _amp_dtype(cfg: Any) -> torch.dtype | None:
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    name = cfg.SOLVER.AMP.DTYPE
    if name not in _AMP_DTYPES:
        raise ValueError(f"SOLVER.AMP.DTYPE must be one of {sorted(_AMP_DTYPES)}, got {name!r}.")
    return _AMP_DTYPES[name]


def _brief(result: Mapping[str, Any]) -> str:
    flat = hooks_mod.flatten_results(result)
    keys = [k for k in flat if k.split("/")[-1] in ("mIoU", "fwIoU", "mACC", "pACC")]
    return ", ".join(f"{k}={flat[k]:.2f}" for k in keys) or str(result)
