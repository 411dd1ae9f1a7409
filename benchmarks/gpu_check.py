"""GPU acceptance run: parity, mixed-precision SyncBN training, channels_last/compile, R103 figures.

    python benchmarks/gpu_check.py [--device cuda] [--peak-tflops 989 --peak-tflops-fp32 494]
                                   [--json out.json] [--no-compile] [--budget-s 420]
    python benchmarks/gpu_check.py --device cpu --tiny --json out.json   # how CI runs it

Run from a checkout (the parity check reads tests/fixtures/detectron2/ and builds the reference
model the way tests/conftest.py does). Prints one table, one row per check, status PASS, FAIL or
SKIP (with the reason); exits 1 if any row FAILs, 2 if the run cannot start (no fixtures, no CUDA).

1. fp32 logits of the detectron2 reference model on the device within 1e-3 of the CPU reference.
2. A few training steps in fp32, AMP bf16 and AMP fp16 (GradScaler) in a 1-process group (NCCL on
   CUDA with SyncBN converted to nn.SyncBatchNorm and DDP; gloo on CPU, where nn.SyncBatchNorm
   cannot run and the project's NaiveSyncBatchNorm stays): finite losses that go down.
3. channels_last, torch.compile and the bf16 fast path agree with fp32 eager.
4. R103 DeepLabV3+ figures: inference images/s at 1024x2048 (fp32, bf16, bf16 + compile; batch 1
   and 4), training iteration time and peak memory at batch 8 of 512x1024, and the model FLOP
   utilisation they imply. ``--tiny`` swaps in the small reference-width model and tiny sizes.

fp32 comparisons (checks 1 and 3) run with TF32 off; the fp32 figures of check 4 use PyTorch's
defaults (cuDNN convolutions may use TF32), which the JSON records.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import itertools
import math
import sys
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
from atrous.deploy.benchmark import (
    BenchmarkResult,
    hardware_name,
    peak_memory,
    random_batch,
    reset_peak_memory,
    time_iterations,
    write_json,
)
from atrous.engine.launch import find_free_port
from atrous.engine.trainer import SimpleTrainer
from atrous.layers import convert_sync_batchnorm
from atrous.modeling import build_model
from atrous.solver import build_optimizer

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
    """What the figures (check 4) measure: the full R103 on a GPU, or a tiny model."""

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
    reference: Any  # the tests.conftest module: reference configs and files
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


# -- set-up ---------------------------------------------------------------------------------


class CannotStart(Exception):
    """The run cannot begin (exit status 2); the message says what to do."""


def load_reference_helpers() -> Any:
    """tests/conftest.py of this checkout: the reference model's config and fixture folder.

    The reference overrides are defined once, next to the fixtures they produced; this script
    uses them rather than a copy.
    """
    if not (REPO_ROOT / "tests" / "conftest.py").is_file():
        raise CannotStart(
            f"{REPO_ROOT / 'tests'} is missing: gpu_check.py runs from a git checkout of atrous "
            "(the reference fixtures are not part of the wheel)."
        )
    sys.path.insert(0, str(REPO_ROOT))
    try:
        import tests.conftest as reference
    except ImportError as error:
        raise CannotStart(
            f"Cannot import tests/conftest.py ({error}); install the dev extra: "
            "pip install -e '.[dev]'."
        ) from error
    try:
        reference._find_reference_dir()
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
    cfg.merge_from_list(["MODEL.RESNETS.NORM", norm, "MODEL.SEM_SEG_HEAD.NORM", norm])
    return cfg


def reference_model(run: Run) -> nn.Module:
    """The detectron2 reference model with its weights, in eval mode on the device."""
    from atrous.checkpoint import Checkpointer

    directory = run.reference._find_reference_dir()
    cfg = small_config(run.reference)
    model = build_model(cfg)
    report = Checkpointer(model).load(str(directory / "small_v3plus.pkl"), strict=True)
    if not report.ok:
        raise RuntimeError(f"small_v3plus.pkl did not load completely: {report}")
    return model.to(run.device).eval()


def reference_image(run: Run) -> torch.Tensor:
    """(3, 128, 256) uint8 RGB, the image the reference logits were computed on."""
    array = np.load(run.reference._find_reference_dir() / "input_128x256.npy")
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def logits_of(model: nn.Module, images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """(N, C, H, W) float32 logits on the CPU."""
    with torch.no_grad():
        outputs = model([{"image": image.to(device)} for image in images])
    return torch.stack([out["sem_seg"].float().cpu() for out in outputs])


PARITY_NAME = "1 fp32 logits vs detectron2 CPU reference"


def check_parity(run: Run) -> Row:
    expected = np.load(
        run.reference._find_reference_dir() / "small_v3plus_nocrop__128x256__logits.npy"
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


def prepare_for_training(model: nn.Module, device: torch.device) -> tuple[nn.Module, str]:
    """Model on the device, SyncBN converted as the trainer does on CUDA, wrapped in DDP.

    Returns the wrapped model and a description of its synchronised norm layers.
    """
    from atrous.layers import NaiveSyncBatchNorm

    model = model.to(device).train()
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
    return wrapped, f"{count} {kind.__name__}"


def labelled_batch(run: Run) -> list[dict[str, Any]]:
    """The reference image and its mirror, labelled with the reference model's argmax."""
    image = reference_image(run)
    labels = np.load(
        run.reference._find_reference_dir() / "small_v3plus_nocrop__128x256__argmax.npy"
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
    model, sync = prepare_for_training(build_model(cfg), run.device)
    scaler = torch.amp.GradScaler(run.device.type) if dtype == torch.float16 else None
    trainer = SimpleTrainer(
        model=model,
        data_loader=itertools.repeat(labelled_batch(run)),
        optimizer=build_optimizer(cfg, model.module),
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


# -- check 4: figures -------------------------------------------------------------------------


def figures_config(run: Run) -> tuple[Any, str]:
    """The config the figures measure, with random weights, and its name."""
    if run.plan.tiny:
        return small_config(run.reference, norm="SyncBN"), "tiny (reference widths, R50)"
    from atrous.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(R103_CONFIG))
    cfg.MODEL.WEIGHTS = ""
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
    if channels_last:
        # What SOLVER.CHANNELS_LAST does in the trainer: channels_last weights make the
        # convolutions produce channels_last activations.
        model = model.to(memory_format=torch.channels_last)
    wrapped, sync = prepare_for_training(model, run.device)
    trainer = SimpleTrainer(
        model=wrapped,
        data_loader=itertools.repeat(to_device(inputs, run.device)),
        optimizer=build_optimizer(cfg, wrapped.module),
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
            name = f"4 infer {label} b{batch} {h}x{w}"
            check = functools.partial(
                infer_figure, run, name, dtype=dtype, batch=batch, compile=compile
            )
            checks.append((name, check, COMPILE_RESERVE_S if compile else 0.0))

    infer("float32", False)
    infer("bfloat16", False)
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "AMP bf16 + channels_last")):
        name = f"4 train {label} b{run.plan.train_batch} {th}x{tw}"
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
