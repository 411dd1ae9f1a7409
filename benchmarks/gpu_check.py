"""GPU acceptance run: parity, SyncBN training, channels_last/compile, the seed's command, figures.

    python benchmarks/gpu_check.py [--device cuda] [--peak-tflops 989 --peak-tflops-fp32 494]
                                   [--json out.json] [--no-compile] [--budget-s 420]
    python benchmarks/gpu_check.py --device cpu --tiny --json out.json   # how CI runs it

Run from a checkout (the parity check reads tests/fixtures/detectron2/ and builds the reference
model as the tests do, with tests/helpers.py). Prints one table, one row per check, status PASS,
FAIL or SKIP (with the reason); exits 1 if any row FAILs, 2 if the run cannot start (no fixtures,
no CUDA).

1. fp32 logits of the detectron2 reference model on the device within 1e-3 of the CPU reference.
2. A few training steps in fp32, AMP bf16 and AMP fp16 (GradScaler) in a 1-process group (NCCL on
   CUDA with SyncBN converted to nn.SyncBatchNorm and DDP; gloo on CPU, where nn.SyncBatchNorm
   cannot run and the project's NaiveSyncBatchNorm stays): finite losses that go down, with the
   optimizer built before the conversion, as the trainer builds it, still holding every
   trainable parameter.
3. channels_last, torch.compile and the bf16 fast path agree with fp32 eager.
4. The seed's training command (``python -m atrous.cli.train``, what train_net.py runs) on a small
   synthetic set: the optimizer still covers the R103 after the SyncBN conversion; a few dozen
   iterations on the device against the same run on the CPU (loss curves within
   LOSS_CURVE_RTOL); a run resumed from its half-way checkpoint against the whole run (final
   weights within RESUME_RTOL); with 2+ GPUs, ``--num-gpus 2`` (NCCL, nn.SyncBatchNorm, DDP)
   against one process, and two spawned ranks' SyncBN statistics against one process with the
   doubled batch. On the CPU the same rows run with gloo.
5. R103 DeepLabV3+ figures: inference images/s at 1024x2048 (fp32, bf16, bf16 + compile; batch 1
   and 4), training iteration time and peak memory at batch 8 of 512x1024, and the model FLOP
   utilisation they imply. ``--tiny`` swaps in the small reference-width model and tiny sizes.

fp32 comparisons (checks 1 and 3) run with TF32 off; the fp32 figures of check 5 use PyTorch's
defaults (cuDNN convolutions may use TF32), which the JSON records.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.util
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from atrous.config import get_config_file
from atrous.deploy import count_model_flops, optimize_for_inference
from atrous.engine.launch import find_free_port
from atrous.engine.trainer import SimpleTrainer
from atrous.layers import convert_sync_batchnorm
from atrous.modeling import build_model
from atrous.solver import build_optimizer, check_optimizer_covers
from atrous.utils.timing import (
    BenchmarkResult,
    hardware_name,
    peak_memory,
    random_batch,
    reset_peak_memory,
    time_iterations,
    write_json,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
R103_CONFIG = "Cityscapes-SemanticSegmentation/deeplab_v3_plus_R_103_os16_mg124_poly_90k_bs16.yaml"
PARITY_ATOL = 1e-3  # the bound; the CPU parity tests hold 1e-4
FP32_VARIANT_ATOL = 1e-3  # channels_last / compiled fp32 against fp32 eager on the same device
# The reference model has random weights, and its depth amplifies rounding about a hundredfold:
# on the CPU, fp16 autocast moves its logits by 6% of their standard deviation on average and the
# bf16 fast path by 26% (argmax agreement 68%), where a trained model agrees to 99.8%
# (docs/benchmarks.md). Argmax agreement says nothing here; a broken reduced-precision path
# (layout, casts) gives an error of the order of the logits themselves, which this bound catches.
BF16_MAX_RELATIVE_ERROR = 0.5  # mean |bf16 - fp32| over the fp32 logits' standard deviation
TRAIN_STEPS = 8
# A figure row that compiles starts only if this much of --budget-s is left. Compiling the tiny
# model took about 40 s on two CPU cores; the R103 on a GPU machine is a guess, not measured yet.
COMPILE_RESERVE_S = 120.0


NO_COMPILE_NOTE = "compile off (the default on CPU; --compile runs it)"


@dataclass
class Row:
    """One line of the table: a check or a figure."""

    name: str
    status: str  # PASS, FAIL or SKIP
    value: str
    note: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What the figures (check 5) measure: the full R103 on a GPU, or a tiny model."""

    tiny: bool
    infer_size: tuple[int, int]
    infer_batches: tuple[int, ...]
    train_size: tuple[int, int]
    train_batch: int
    warmup: int
    iters: int


FULL_PLAN = Plan(False, (1024, 2048), (1, 4), (512, 1024), 8, warmup=3, iters=10)
TINY_PLAN = Plan(True, (64, 128), (1, 4), (64, 128), 2, warmup=1, iters=2)


@dataclass
class Run:
    """The settings every check reads."""

    device: torch.device
    plan: Plan
    compile: bool
    peak_tflops: float | None
    peak_tflops_fp32: float | None
    budget_s: float
    reference: Any  # tests/helpers.py, loaded by its path: reference configs and files
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


# -- set-up ---------------------------------------------------------------------------------


class CannotStart(Exception):
    """The run cannot begin (exit status 2); the message says what to do."""


def load_reference_helpers() -> Any:
    """tests/helpers.py of this checkout: the reference model's config and fixture folder.

    The reference overrides are defined once, next to the fixtures they produced; this script
    uses them rather than a copy. The file is loaded by its path: the checkout's folder is not
    put on the import path, so nothing else of it (``tests``' conftest files) is imported.
    """
    path = REPO_ROOT / "tests" / "helpers.py"
    if not path.is_file():
        raise CannotStart(
            f"{path} is missing: gpu_check.py runs from a git checkout of atrous "
            "(the reference fixtures are not part of the wheel)."
        )
    spec = importlib.util.spec_from_file_location("atrous_test_helpers", path)
    reference = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(reference)
    except ImportError as error:
        raise CannotStart(
            f"Cannot import {path} ({error}); install atrous with its dev extra: "
            "pip install -e '.[dev]'."
        ) from error
    try:
        reference.find_reference_dir()
    except FileNotFoundError as error:
        raise CannotStart(str(error)) from error
    return reference


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CannotStart(
                f"--device {name}: this torch ({torch.__version__}) sees no GPU; install a CUDA "
                "build of torch, or run the CPU smoke test with --device cpu --tiny."
            )
        # NCCL, DDP and the memory counters want an explicit device index.
        device = torch.device("cuda", device.index if device.index is not None else 0)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise CannotStart(f"--device {name}: use cpu, cuda or cuda:N.")
    return device


@contextlib.contextmanager
def single_process_group(device: torch.device) -> Iterator[str]:
    """A world-size-1 process group on a free 127.0.0.1 port: NCCL on CUDA, gloo on CPU."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://127.0.0.1:{find_free_port()}",
        world_size=1,
        rank=0,
    )
    try:
        yield backend
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off for convolutions and matmuls (a 1e-3 comparison cannot survive TF32's 10 bits).

    Only the legacy flags are set (and restored): mixing them with the per-backend
    ``fp32_precision`` API makes newer torch raise when inductor reads the flags.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def release_memory(device: torch.device) -> None:
    """Free what the last check left, so each peak-memory window sees only its own tensors."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def to_device(items: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in x.items()} for x in items
    ]


# -- the reference model (checks 1-3) --------------------------------------------------------


def small_config(reference: Any, *, norm: str = "BN") -> Any:
    """The reference model's config (V3+ R103 with the reference overrides), `norm` everywhere."""
    cfg = reference.load_config(reference.V3PLUS_CONFIG, reference.SMALL_REFERENCE_OVERRIDES)
    # Built on the CPU (the same initial weights everywhere), then moved by each check.
    cfg.merge_from_list(
        ["MODEL.RESNETS.NORM", norm, "MODEL.SEM_SEG_HEAD.NORM", norm, "MODEL.DEVICE", "cpu"]
    )
    return cfg


def reference_model(run: Run) -> nn.Module:
    """The detectron2 reference model with its weights, in eval mode on the device."""
    from atrous.checkpoint import Checkpointer

    directory = run.reference.find_reference_dir()
    cfg = small_config(run.reference)
    model = build_model(cfg)
    report = Checkpointer(model).load(str(directory / "small_v3plus.pkl"), strict=True)
    if not report.ok:
        raise RuntimeError(f"small_v3plus.pkl did not load completely: {report}")
    return model.to(run.device).eval()


def reference_image(run: Run) -> torch.Tensor:
    """(3, 128, 256) uint8 RGB, the image the reference logits were computed on."""
    array = np.load(run.reference.find_reference_dir() / "input_128x256.npy")
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def logits_of(model: nn.Module, images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """(N, C, H, W) float32 logits on the CPU."""
    with torch.no_grad():
        outputs = model([{"image": image.to(device)} for image in images])
    return torch.stack([out["sem_seg"].float().cpu() for out in outputs])


PARITY_NAME = "1 fp32 logits vs detectron2 CPU reference"


def check_parity(run: Run) -> Row:
    expected = np.load(
        run.reference.find_reference_dir() / "small_v3plus_nocrop__128x256__logits.npy"
    )
    with strict_fp32():
        logits = logits_of(reference_model(run), [reference_image(run)], run.device)[0].numpy()
    diff = float(np.abs(logits - expected).max())
    agreement = float((logits.argmax(0) == expected.argmax(0)).mean())
    return Row(
        PARITY_NAME,
        "PASS" if diff <= PARITY_ATOL else "FAIL",
        f"max |diff| {diff:.2e} (<= {PARITY_ATOL:g}), argmax agreement {100 * agreement:.3f}%",
        data={"max_abs_diff": diff, "atol": PARITY_ATOL, "argmax_agreement": agreement},
    )


# -- check 2: training steps with SyncBN ---------------------------------------------------


def amp_support(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when autocast runs `dtype` on `device`, else why it is skipped."""
    if dtype == torch.float32:
        return None
    if device.type == "cuda":
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16 (needs compute capability 8.0+)"
        return None
    try:
        with torch.autocast("cpu", dtype=dtype):
            torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1))
    except (RuntimeError, AssertionError) as error:
        return f"CPU autocast does not run {dtype} here ({error})"
    return None


def prepare_for_training(
    model: nn.Module, device: torch.device, optimizer: torch.optim.Optimizer
) -> tuple[nn.Module, str]:
    """Model on the device, SyncBN converted as the trainer does on CUDA, wrapped in DDP.

    `optimizer` is built before the conversion, as `atrous.engine.Trainer` builds it, and must
    still hold every trainable parameter afterwards (`check_optimizer_covers`).

    Returns the wrapped model and a description of its synchronised norm layers.
    """
    from atrous.layers import NaiveSyncBatchNorm

    model = model.train()
    if device.type == "cuda":
        model = convert_sync_batchnorm(model)
        kind = nn.SyncBatchNorm
    else:
        # nn.SyncBatchNorm refuses CPU tensors inside a process group; the trainer keeps the
        # gloo-capable NaiveSyncBatchNorm there.
        kind = NaiveSyncBatchNorm
    count = sum(type(m) is kind for m in model.modules())
    if count == 0:
        raise RuntimeError(f"no {kind.__name__} layer after conversion: SyncBN was not converted")
    device_ids = [device.index] if device.type == "cuda" else None
    wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    check_optimizer_covers(wrapped, optimizer)
    return wrapped, f"{count} {kind.__name__}"


def labelled_batch(run: Run) -> list[dict[str, Any]]:
    """The reference image and its mirror, labelled with the reference model's argmax."""
    image = reference_image(run)
    labels = np.load(
        run.reference.find_reference_dir() / "small_v3plus_nocrop__128x256__argmax.npy"
    )
    labels = torch.from_numpy(labels.astype(np.int64))
    return to_device(
        [
            {"image": image, "sem_seg": labels},
            {"image": image.flip(-1), "sem_seg": labels.flip(-1)},
        ],
        run.device,
    )


def training_name(dtype: torch.dtype) -> str:
    label = {torch.float32: "fp32", torch.bfloat16: "AMP bf16", torch.float16: "AMP fp16"}[dtype]
    return f"2 train {label} SyncBN" + (" + GradScaler" if dtype == torch.float16 else "")


def check_training(run: Run, dtype: torch.dtype, group_backend: str) -> Row:
    name = training_name(dtype)
    reason = amp_support(run.device, dtype)
    if reason:
        return Row(name, "SKIP", "", note=reason)
    torch.manual_seed(0)
    cfg = small_config(run.reference, norm="SyncBN")
    model = build_model(cfg).to(run.device)
    optimizer = build_optimizer(cfg, model)
    model, sync = prepare_for_training(model, run.device, optimizer)
    scaler = torch.amp.GradScaler(run.device.type) if dtype == torch.float16 else None
    trainer = SimpleTrainer(
        model=model,
        data_loader=itertools.repeat(labelled_batch(run)),
        optimizer=optimizer,
        amp_dtype=None if dtype == torch.float32 else dtype,
        grad_scaler=scaler,
    )
    trainer.train(0, TRAIN_STEPS)  # raises FloatingPointError on a non-finite loss
    losses = [value for value, _ in trainer.storage.history("total_loss").values]
    finite = all(math.isfinite(v) for v in losses)
    decreased = finite and losses[-1] < losses[0]
    note = f"{group_backend} group, {sync}"
    if run.device.type == "cpu" and dtype == torch.float16:
        note += ", CPU autocast fp16"
    data = {"losses": losses, "group_backend": group_backend, "sync_bn": sync}
    if scaler is not None:
        data["final_loss_scale"] = float(scaler.get_scale())
        note += f", final loss scale {scaler.get_scale():g}"
    return Row(
        name,
        "PASS" if decreased else "FAIL",
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps"
        + ("" if decreased else " (did not decrease)"),
        note=note,
        data=data,
    )


# -- check 3: channels_last, compile, bf16 against fp32 eager ------------------------------


def compare_variant(
    run: Run, name: str, *, dtype: str, channels_last: bool, fold_bn: bool, compile: bool
) -> Row:
    if compile and not run.compile:
        return Row(name, "SKIP", "", note=NO_COMPILE_NOTE)
    reason = amp_support(run.device, getattr(torch, dtype))
    if reason:
        return Row(name, "SKIP", "", note=reason)
    if compile:
        torch._dynamo.reset()
    images = [reference_image(run), reference_image(run).flip(-1)]
    with strict_fp32():
        model = reference_model(run)
        eager = logits_of(model, images, run.device)
        variant = optimize_for_inference(
            model, dtype=dtype, channels_last=channels_last, fold_bn=fold_bn, compile=compile
        )
        ours = logits_of(variant, images, run.device)
    diff = float((ours - eager).abs().max())
    relative = float((ours - eager).abs().mean() / eager.std())
    agreement = float((ours.argmax(1) == eager.argmax(1)).float().mean())
    data = {"max_abs_diff": diff, "mean_abs_diff_over_std": relative, "argmax_agreement": agreement}
    finite = bool(torch.isfinite(ours).all())
    if dtype == "float32":
        ok = finite and diff <= FP32_VARIANT_ATOL
        value = f"max |diff| {diff:.2e} (<= {FP32_VARIANT_ATOL:g})"
    else:
        ok = finite and relative <= BF16_MAX_RELATIVE_ERROR
        bound = f"<= {100 * BF16_MAX_RELATIVE_ERROR:g}%"
        value = f"mean |diff| {100 * relative:.1f}% of logit std ({bound})"
    note = f"argmax agreement {100 * agreement:.3f}%"
    if dtype != "float32":
        note += " (random weights: rounding amplified, see BF16_MAX_RELATIVE_ERROR)"
    return Row(name, "PASS" if ok else "FAIL", value, note=note, data=data)


def variant_checks(run: Run) -> list[tuple[str, Callable[[], Row]]]:
    # (name, dtype, channels_last, fold_bn, compile)
    specs = [
        ("3 channels_last fp32 vs eager", "float32", True, False, False),
        ("3 compile fp32 vs eager", "float32", False, False, True),
        ("3 bf16 fast path (channels_last, folded BN) vs fp32", "bfloat16", True, True, False),
        ("3 bf16 fast path + compile vs fp32", "bfloat16", True, True, True),
    ]
    return [
        (
            name,
            functools.partial(
                compare_variant, run, name, dtype=dtype, channels_last=cl, fold_bn=fold, compile=c
            ),
        )
        for name, dtype, cl, fold, c in specs
    ]


# -- check 4: the seed's training command (launch, SyncBN, optimizer, checkpoint, resume) -----

QUICKSTART = "Synthetic/deeplab_v3_plus_R_50_quickstart.yaml"
# float32 with TF32 off, no dropout (CUDA and CPU draw different masks), a loss logged at every
# iteration: runs on two devices then differ by rounding only. Each run ends with an evaluation
# (the helper-thread scoring on CUDA, the official Cityscapes script).
TRAIN_RUN_OVERRIDES = [
    "SOLVER.AMP.ENABLED", "False",
    "FLOAT32_PRECISION", "highest",
    "MODEL.SEM_SEG_HEAD.ASPP_DROPOUT", "0.0",
    "SOLVER.IMS_PER_BATCH", "4",
    "SOLVER.WARMUP_ITERS", "2",
    "DATASETS.TEST", "('synthetic_sem_seg_val',)",
    "TEST.EVAL_PERIOD", "0",
    "LOG_PERIOD", "1",
    "SEED", "0",
]  # fmt: skip
# The tiny plan's training crop, on top of tests/helpers.py's TINY_WIDTHS_AND_TRAIN_SIZES.
TINY_TRAIN_CROP = ["INPUT.CROP.SIZE", "(64, 128)"]


def tiny_train_overrides(reference: Any) -> list[str]:
    """The tiny plan's training runs: the tests' tiny widths and scales, a 64x128 crop."""
    return [*reference.TINY_WIDTHS_AND_TRAIN_SIZES, *TINY_TRAIN_CROP]


TRAIN_RUN_ITERS = {False: 24, True: 8}  # full plan, tiny plan
# Largest relative difference of the (median-smoothed) logged losses allowed between a run on the
# device and the same run on the CPU: float32 rounding of another kernel library grows over the
# steps; a BatchNorm left untrained, or another data order, moves the curve by far more.
LOSS_CURVE_RTOL = 0.02
# Between one process with batch 4 and two with 2 each (SyncBN): the hard-pixel-mining loss keeps
# the top 20% of pixels per process, not of the whole batch.
TWO_PROCESS_RTOL = 0.05
# Final weights of a run stopped half-way and resumed against the uninterrupted run: ||diff|| over
# ||weights||. Bit-identical on the CPU; cuDNN's backward kernels sum in varying orders.
RESUME_RTOL = 1e-3


@dataclass
class TrainRun:
    """One `train_net.py` run of check 5."""

    out: Path
    proc: subprocess.CompletedProcess

    @property
    def log(self) -> str:
        path = self.out / "log.txt"
        return path.read_text(encoding="utf-8") if path.is_file() else ""

    def losses(self) -> dict[int, float]:
        path = self.out / "metrics.json"
        if not path.is_file():
            return {}
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {int(r["iteration"]): float(r["total_loss"]) for r in rows if "total_loss" in r}

    def failure(self) -> str | None:
        if self.proc.returncode == 0:
            return None
        tail = (self.proc.stderr or self.proc.stdout).strip().splitlines()[-1:]
        return f"exit status {self.proc.returncode}: {' '.join(tail)[:200]}"


class TrainingCommand:
    """Runs ``python -m atrous.cli.train`` (what train_net.py runs) on a small synthetic set."""

    def __init__(self, run: Run, workdir: Path) -> None:
        from atrous.data.datasets.synthetic import generate_dataset

        self.run = run
        self.workdir = workdir
        self.iters = TRAIN_RUN_ITERS[run.plan.tiny]
        size = (64, 128) if run.plan.tiny else (128, 256)
        generate_dataset(workdir / "datasets" / "synthetic", num_train=16, num_val=2, size=size)

    def __call__(
        self, name: str, *, device: str, num_gpus: int = 1, resume_from: Path | None = None
    ) -> TrainRun:
        out = self.workdir / name
        if resume_from is not None:
            # A run stopped after the checkpoint half-way: that file and the pointer to it.
            out.mkdir(parents=True)
            shutil.copy2(resume_from, out / resume_from.name)
            (out / "last_checkpoint").write_text(resume_from.name)
        command = [
            sys.executable, "-m", "atrous.cli.train",
            "--config-file", QUICKSTART, "--num-gpus", str(num_gpus),
            *(["--resume"] if resume_from is not None else []),
            *TRAIN_RUN_OVERRIDES,
            *(tiny_train_overrides(self.run.reference) if self.run.plan.tiny else []),
            "SOLVER.MAX_ITER", str(self.iters),
            "SOLVER.CHECKPOINT_PERIOD", str(self.iters // 2),
            "MODEL.DEVICE", device,
            "OUTPUT_DIR", str(out),
        ]  # fmt: skip
        env = {
            **os.environ,
            "ATROUS_DATASETS": str(self.workdir / "datasets"),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")) if p
            ),
        }
        proc = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=self.workdir, timeout=300
        )
        return TrainRun(out, proc)

    def checkpoint_half_way(self, run: TrainRun) -> Path:
        return run.out / f"model_{self.iters // 2 - 1:07d}.pth"


def relative_curve_difference(ours: dict[int, float], reference: dict[int, float]) -> float:
    """Largest |ours - reference| / |reference| over the iterations both logged (inf if none)."""
    common = sorted(set(ours) & set(reference))
    if not common:
        return math.inf
    return max(abs(ours[i] - reference[i]) / max(abs(reference[i]), 1e-12) for i in common)


def relative_weight_difference(a: Path, b: Path) -> float:
    """||a - b|| / ||a|| over the floating-point tensors of two checkpoints' models."""
    first = torch.load(a, map_location="cpu", weights_only=True)["model"]
    second = torch.load(b, map_location="cpu", weights_only=True)["model"]
    diff = norm = 0.0
    for key, value in first.items():
        if value.is_floating_point():
            diff += float((value.double() - second[key].double()).pow(2).sum())
            norm += float(value.double().pow(2).sum())
    return math.sqrt(diff / max(norm, 1e-30))


def check_optimizer_coverage_r103(run: Run) -> Row:
    """The seed's R103 DeepLabV3+ on the device: optimizer built, SyncBN converted, covered."""
    from atrous.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(R103_CONFIG))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).to(run.device)
    optimizer = build_optimizer(cfg, model)
    trainable = sum(p.requires_grad for p in model.parameters())
    converted = convert_sync_batchnorm(model)
    sync = sum(type(m) is nn.SyncBatchNorm for m in converted.modules())
    check_optimizer_covers(converted, optimizer)  # raises: a FAIL row naming the parameters
    return Row(
        "4 optimizer holds every trainable parameter after the SyncBN conversion (R103)",
        "PASS",
        f"{trainable} trainable parameters, {sync} nn.SyncBatchNorm layers",
        data={"trainable_parameters": trainable, "sync_batchnorm_layers": sync},
    )


def check_training_command(run: Run, command: TrainingCommand, results: dict) -> Row:
    """train_net.py on the device against the same run on the CPU: the loss curves agree."""
    name = "4 train_net.py on the device vs the CPU (loss curve)"
    device = str(run.device) if run.device.type == "cpu" else "cuda"
    ours = results["device"] = command("device", device=device)
    reference = ours if run.device.type == "cpu" else command("cpu", device="cpu")
    for attempt in (ours, reference):
        if attempt.failure():
            return Row(name, "FAIL", "", note=f"{attempt.out.name}: {attempt.failure()}")
    on_device = f"Training on {run.device.type}" in ours.log
    covered = len(ours.losses()) == command.iters
    evaluated = (ours.out / "inference" / "synthetic_sem_seg_val" / "report.html").is_file()
    rtol = relative_curve_difference(ours.losses(), reference.losses())
    ok = on_device and covered and evaluated and rtol <= LOSS_CURVE_RTOL
    first, last = min(ours.losses(), default=0), max(ours.losses(), default=0)
    value = (
        f"max rel. loss difference {rtol:.2e} (<= {LOSS_CURVE_RTOL:g}) over {len(ours.losses())}"
        f" iterations, loss {ours.losses().get(first, math.nan):.3f} -> "
        f"{ours.losses().get(last, math.nan):.3f}"
    )
    note = "" if on_device else f"log.txt does not say 'Training on {run.device.type}'"
    if not evaluated:
        note = "the final evaluation wrote no report"
    data = {"losses": ours.losses(), "cpu_losses": reference.losses(), "max_rel_diff": rtol}
    return Row(name, "PASS" if ok else "FAIL", value, note=note, data=data)


def check_resume(run: Run, command: TrainingCommand, results: dict) -> Row:
    """Stopped half-way and resumed with --resume: the same final weights as one whole run."""
    name = "4 train_net.py --resume from the half-way checkpoint"
    full = results.get("device")
    if full is None or full.failure():
        return Row(name, "SKIP", "", note="the uninterrupted run (previous row) did not finish")
    device = str(run.device) if run.device.type == "cpu" else "cuda"
    resumed = command("resumed", device=device, resume_from=command.checkpoint_half_way(full))
    if resumed.failure():
        return Row(name, "FAIL", "", note=resumed.failure())
    started = f"Resuming from iteration {command.iters // 2}" in resumed.log
    rtol = relative_weight_difference(full.out / "model_final.pth", resumed.out / "model_final.pth")
    ok = started and rtol <= RESUME_RTOL
    note = "" if started else "log.txt does not say where it resumed"
    return Row(
        name,
        "PASS" if ok else "FAIL",
        f"final weights differ by {rtol:.2e} of their norm (<= {RESUME_RTOL:g})",
        note=note,
        data={"relative_weight_difference": rtol},
    )


def check_two_processes(run: Run, command: TrainingCommand, results: dict) -> Row:
    """train_net.py --num-gpus 2 (NCCL, nn.SyncBatchNorm, DDP) against one process."""
    name = "4 train_net.py --num-gpus 2 vs one process (SyncBN, DDP)"
    if run.device.type == "cuda" and torch.cuda.device_count() < 2:
        return Row(name, "SKIP", "", note="one GPU visible; needs two")
    one = results.get("device")
    if one is None or one.failure():
        return Row(name, "SKIP", "", note="the one-process run (row above) did not finish")
    device = str(run.device) if run.device.type == "cpu" else "cuda"
    two = command("two_processes", device=device, num_gpus=2)
    if two.failure():
        return Row(name, "FAIL", "", note=two.failure())
    rtol = relative_curve_difference(two.losses(), one.losses())
    converted = run.device.type == "cpu" or "run as nn.SyncBatchNorm (NCCL)" in two.log
    ok = converted and len(two.losses()) == command.iters and rtol <= TWO_PROCESS_RTOL
    note = "gloo, NaiveSyncBatchNorm" if run.device.type == "cpu" else "NCCL, nn.SyncBatchNorm"
    if not converted:
        note = "log.txt does not report the SyncBatchNorm conversion"
    return Row(
        name,
        "PASS" if ok else "FAIL",
        f"max rel. loss difference {rtol:.2e} (<= {TWO_PROCESS_RTOL:g})",
        note=note,
        data={"losses": two.losses(), "max_rel_diff": rtol},
    )


SYNC_STATS_NAME = "4 SyncBN statistics: 2 ranks vs 1 process with the doubled batch"


def _sync_stats_worker(rank: int, port: int, backend: str, batch: torch.Tensor, out: str) -> None:
    from atrous.layers import NaiveSyncBatchNorm

    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank)
    try:
        torch.manual_seed(0)
        layer = NaiveSyncBatchNorm(batch.shape[1]).to(device)
        if backend == "nccl":
            layer = convert_sync_batchnorm(layer)
        half = batch.shape[0] // 2
        x = batch[rank * half : (rank + 1) * half].to(device).requires_grad_(True)
        y = layer(x)
        y.pow(2).mean().backward()
        torch.save(
            {
                "kind": type(layer).__name__,
                "y": y.detach().cpu(),
                "grad": x.grad.cpu(),
                "running_mean": layer.running_mean.cpu(),
                "running_var": layer.running_var.cpu(),
            },
            f"{out}.{rank}",
        )
    finally:
        dist.destroy_process_group()


def check_sync_statistics(run: Run, workdir: Path) -> Row:
    """Two spawned ranks with half a batch each against one BatchNorm2d on the whole batch."""
    import torch.multiprocessing as mp

    if run.device.type == "cuda" and torch.cuda.device_count() < 2:
        return Row(SYNC_STATS_NAME, "SKIP", "", note="one GPU visible; needs two")
    backend = "nccl" if run.device.type == "cuda" else "gloo"
    batch = torch.randn(8, 16, 12, 20, generator=torch.Generator().manual_seed(0)) * 3 + 1
    out = str(workdir / "sync_stats")
    mp.start_processes(
        _sync_stats_worker,
        args=(find_free_port(), backend, batch, out),
        nprocs=2,
        start_method="spawn",
    )
    ranks = [torch.load(f"{out}.{rank}", weights_only=True) for rank in (0, 1)]
    reference = nn.BatchNorm2d(16)
    x = batch.clone().requires_grad_(True)
    y = reference(x)
    # Each rank's loss is the mean over its half: the sum of both is the whole batch's mean x 2.
    (y.pow(2).mean() * 2).backward()
    y_diff = float((torch.cat([r["y"] for r in ranks]) - y.detach()).abs().max())
    grad_diff = float((torch.cat([r["grad"] for r in ranks]) - x.grad).abs().max())
    stats_diff = max(
        float((r[key] - getattr(reference, key)).abs().max())
        for r in ranks
        for key in ("running_mean", "running_var")
    )
    worst = max(y_diff, grad_diff, stats_diff)
    return Row(
        SYNC_STATS_NAME,
        "PASS" if worst <= 1e-4 else "FAIL",
        f"max |diff| output {y_diff:.1e}, input gradient {grad_diff:.1e}, running stats "
        f"{stats_diff:.1e} (<= 1e-4)",
        note=f"{backend}, {ranks[0]['kind']}",
        data={"output": y_diff, "gradient": grad_diff, "running_stats": stats_diff},
    )


def training_command_checks(run: Run, workdir: Path) -> list[tuple[str, Callable[[], Row]]]:
    results: dict[str, TrainRun] = {}
    command: list[TrainingCommand] = []

    def lazily(check: Callable[..., Row]) -> Callable[[], Row]:
        def go() -> Row:
            if not command:
                command.append(TrainingCommand(run, workdir))
            return check(run, command[0], results)

        return go

    return [
        (
            "4 optimizer holds every trainable parameter after the SyncBN conversion (R103)",
            lambda: check_optimizer_coverage_r103(run),
        ),
        ("4 train_net.py on the device vs the CPU (loss curve)", lazily(check_training_command)),
        ("4 train_net.py --resume from the half-way checkpoint", lazily(check_resume)),
        ("4 train_net.py --num-gpus 2 vs one process (SyncBN, DDP)", lazily(check_two_processes)),
        (SYNC_STATS_NAME, lambda: check_sync_statistics(run, workdir)),
    ]


# -- check 5: figures -------------------------------------------------------------------------


def figures_config(run: Run) -> tuple[Any, str]:
    """The config the figures measure, with random weights, and its name."""
    if run.plan.tiny:
        return small_config(run.reference, norm="SyncBN"), "tiny (reference widths, R50)"
    from atrous.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(R103_CONFIG))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"  # moved to the device by each figure
    return cfg, R103_CONFIG


def measure(
    run: Run,
    step: Callable[[], Any],
    *,
    flops: int,
    peak: float | None,
    warmup: int,
    **fields: Any,
) -> BenchmarkResult:
    """Time `step` with the project's benchmark loop; peak memory from before the warm-up."""
    reset_peak_memory(run.device)
    times, warmup_s = time_iterations(step, warmup=warmup, iters=run.plan.iters, device=run.device)
    memory, memory_kind = peak_memory(run.device)
    return BenchmarkResult.from_times(
        times,
        flops_per_iter=flops,
        peak_tflops_per_s=peak,
        device=str(run.device),
        hardware=hardware_name(run.device),
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        warmup=warmup,
        iters=run.plan.iters,
        warmup_s=warmup_s,
        peak_memory_bytes=memory,
        peak_memory_kind=memory_kind,
        runtime="pytorch",
        extra={
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        },
        **fields,
    )


def figure_row(name: str, result: BenchmarkResult) -> Row:
    memory = (
        "n/a"
        if result.peak_memory_bytes is None
        else f"{result.peak_memory_bytes / 2**30:.2f} GiB {result.peak_memory_kind}"
    )
    mfu = "" if result.mfu is None else f", MFU {100 * result.mfu:.1f}%"
    value = (
        f"{result.images_per_s:.2f} img/s, p50 {result.latency_p50_ms:.1f} ms, "
        f"{memory}, {result.achieved_tflops_per_s:.3g} TFLOP/s{mfu}"
    )
    note = f"warm-up {result.warmup_s:.1f} s" + (" (includes compiling)" if result.compile else "")
    ok = all(math.isfinite(t) and t > 0 for t in result.latencies_s)
    return Row(name, "PASS" if ok else "FAIL", value, note=note, data=result.to_dict())


def infer_figure(run: Run, name: str, *, dtype: str, batch: int, compile: bool) -> Row:
    if compile and not run.compile:
        return Row(name, "SKIP", "", note=NO_COMPILE_NOTE)
    reason = amp_support(run.device, getattr(torch, dtype))
    if reason:
        return Row(name, "SKIP", "", note=reason)
    cfg, config_name = figures_config(run)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = random_batch(batch, run.plan.infer_size, num_classes=None)
    flops = count_model_flops(model, inputs, train=False)
    fast = dtype != "float32"
    parameters = sum(p.numel() for p in model.parameters())  # before BN folding removes some
    if compile:
        torch._dynamo.reset()
    runner = optimize_for_inference(
        model.to(run.device),
        dtype=dtype,
        channels_last=fast,
        fold_bn=fast,
        compile=compile,
        inplace=True,
    )
    inputs = to_device(inputs, run.device)
    result = measure(
        run,
        lambda: runner(inputs),
        flops=flops,
        peak=run.peak_tflops_fp32 if dtype == "float32" else run.peak_tflops,
        # A compiled model compiles in its first call; two more calls settle the autotuning.
        warmup=max(run.plan.warmup, 3 if compile else 1),
        mode="infer",
        config_file=config_name,
        size=run.plan.infer_size,
        batch=batch,
        dtype=dtype,
        channels_last=fast,
        compile=compile,
        fold_bn=fast,
        parameters=parameters,
    )
    return figure_row(name, result)


def train_figure(run: Run, name: str, *, dtype: torch.dtype, channels_last: bool) -> Row:
    reason = amp_support(run.device, dtype)
    if reason:
        return Row(name, "SKIP", "", note=reason)
    cfg, config_name = figures_config(run)
    torch.manual_seed(0)
    model = build_model(cfg)
    inputs = random_batch(
        run.plan.train_batch, run.plan.train_size, num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    )
    flops = count_model_flops(model, inputs, train=True)
    forward_flops = count_model_flops(model, inputs, train=False)
    parameters = sum(p.numel() for p in model.parameters())
    model = model.to(run.device)
    if channels_last:
        # What SOLVER.CHANNELS_LAST does in the trainer: channels_last weights make the
        # convolutions produce channels_last activations.
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    wrapped, sync = prepare_for_training(model, run.device, optimizer)
    trainer = SimpleTrainer(
        model=wrapped,
        data_loader=itertools.repeat(to_device(inputs, run.device)),
        optimizer=optimizer,
        amp_dtype=None if dtype == torch.float32 else dtype,
        grad_scaler=torch.amp.GradScaler(run.device.type) if dtype == torch.float16 else None,
    )
    result = measure(
        run,
        trainer.run_step,
        parameters=parameters,
        flops=flops,
        peak=run.peak_tflops_fp32 if dtype == torch.float32 else run.peak_tflops,
        warmup=run.plan.warmup,
        mode="train",
        config_file=config_name,
        size=run.plan.train_size,
        batch=run.plan.train_batch,
        dtype=str(dtype).replace("torch.", ""),
        channels_last=channels_last,
        compile=False,
        fold_bn=False,
    )
    result.extra.update(
        {
            "sync_bn": sync,
            "train_to_forward_flops": flops / forward_flops if forward_flops else None,
        }
    )
    row = figure_row(name, result)
    row.value += f", {result.latency_p50_ms / 1e3:.3f} s/iter"
    return row


def figure_checks(run: Run) -> list[tuple[str, Callable[[], Row], float]]:
    """(name, check, seconds to reserve) of every figure, compiled rows last: when the budget
    runs short, the compiled rows (a minute or more of compiling each) are the ones skipped."""
    h, w = run.plan.infer_size
    th, tw = run.plan.train_size
    checks: list[tuple[str, Callable[[], Row], float]] = []

    def infer(dtype: str, compile: bool) -> None:
        for batch in run.plan.infer_batches:
            label = ("fp32" if dtype == "float32" else "bf16") + (" + compile" if compile else "")
            name = f"5 infer {label} b{batch} {h}x{w}"
            check = functools.partial(
                infer_figure, run, name, dtype=dtype, batch=batch, compile=compile
            )
            checks.append((name, check, COMPILE_RESERVE_S if compile else 0.0))

    infer("float32", False)
    infer("bfloat16", False)
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "AMP bf16 + channels_last")):
        name = f"5 train {label} b{run.plan.train_batch} {th}x{tw}"
        check = functools.partial(
            train_figure, run, name, dtype=dtype, channels_last=dtype != torch.float32
        )
        checks.append((name, check, 0.0))
    infer("bfloat16", True)
    return checks


# -- running and reporting ------------------------------------------------------------------


def guarded(
    run: Run, name: str, check: Callable[[], Row], *, reserve_s: float | None = None
) -> Row:
    """Run one check; an exception becomes a FAIL row (with its traceback on stderr).

    With `reserve_s` the check is budgeted (every row but the parity check): skipped unless that
    many seconds of ``--budget-s`` are left.
    """
    if reserve_s is not None and run.elapsed() + reserve_s > run.budget_s:
        return Row(name, "SKIP", "", note=f"--budget-s {run.budget_s:g} s would be exceeded")
    try:
        return check()
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        return Row(name, "FAIL", "", note=f"{type(error).__name__}: {error}"[:300])
    finally:
        release_memory(run.device)


def print_table(rows: list[Row]) -> None:
    widths = [max(len(r.name) for r in rows), 6, max(len(r.value) for r in rows)]
    print(f"{'check':<{widths[0]}}  {'status':<6}  {'value':<{widths[2]}}  note")
    print("-" * (sum(widths) + 12))
    for r in rows:
        print(f"{r.name:<{widths[0]}}  {r.status:<6}  {r.value:<{widths[2]}}  {r.note}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="tiny model and sizes (CPU CI)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the torch.compile rows (default: on CUDA only; inductor on a CPU takes about "
        "40 s per compile, too slow for the CPU smoke test)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense bf16/fp16 TFLOP/s, for the MFU of bf16 rows (H200/H100 SXM: 989)",
    )
    parser.add_argument(
        "--peak-tflops-fp32",
        type=float,
        default=None,
        help="the TFLOP/s for fp32 rows (with cuDNN's default TF32 convolutions, the TF32 "
        "peak: 494 on H200/H100 SXM)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="skip the remaining rows once this many seconds have passed (the parity check "
        "always runs)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the rows here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        reference = load_reference_helpers()
    except CannotStart as error:
        print(f"gpu_check.py: error: {error}", file=sys.stderr)
        return 2
    run = Run(
        device=device,
        plan=TINY_PLAN if args.tiny else FULL_PLAN,
        compile=device.type == "cuda" if args.compile is None else args.compile,
        peak_tflops=args.peak_tflops,
        peak_tflops_fp32=args.peak_tflops_fp32,
        budget_s=args.budget_s,
        reference=reference,
    )
    rows = [guarded(run, PARITY_NAME, lambda: check_parity(run))]
    with single_process_group(device) as backend:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            check = functools.partial(check_training, run, dtype, backend)
            rows.append(guarded(run, training_name(dtype), check, reserve_s=0.0))
        rows += [guarded(run, name, check, reserve_s=0.0) for name, check in variant_checks(run)]
    # Outside the one-process group above: these start processes (and groups) of their own.
    with tempfile.TemporaryDirectory(prefix="atrous-gpu-check-") as workdir:
        rows += [
            guarded(run, name, check, reserve_s=0.0)
            for name, check in training_command_checks(run, Path(workdir))
        ]
    with single_process_group(device):
        rows += [
            guarded(run, name, check, reserve_s=reserve)
            for name, check, reserve in figure_checks(run)
        ]
    print_table(rows)
    failed = [r.name for r in rows if r.status == "FAIL"]
    total_s = run.elapsed()
    print(f"{len(rows)} rows, {len(failed)} failed, {total_s:.0f} s on {hardware_name(device)}")
    if args.json:
        write_json(
            {
                "device": str(device),
                "hardware": hardware_name(device),
                "torch_version": torch.__version__,
                "tiny": run.plan.tiny,
                "compile": run.compile,
                "plan": asdict(run.plan),
                "elapsed_s": total_s,
                "passed": not failed,
                "rows": [asdict(r) for r in rows],
            },
            args.json,
        )
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
