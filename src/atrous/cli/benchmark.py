"""`atrous benchmark`: images/s, latency, peak memory, parameters and FLOPs of a config.

Examples::

    atrous benchmark --config-file CONFIG.yaml --dtype bf16 --channels-last --fold-bn
    atrous benchmark --config-file CONFIG.yaml --mode train --batch 2 --dtype bf16 --channels-last
    atrous benchmark --config-file CONFIG.yaml --backend onnxruntime --json out/onnx.json
    atrous benchmark --config-file CONFIG.yaml --backend openvino --dtype bf16
    atrous benchmark --config-file CONFIG.yaml --backend openvino --int8
    atrous benchmark --model quantized/model_int8.xml --size 1024x2048
    atrous benchmark --mode accuracy --config-file CONFIG.yaml --dataset NAME MODEL.WEIGHTS W.pkl

The model gets random weights (MODEL.WEIGHTS is ignored), so nothing is downloaded; speed does
not depend on the weights' values. ``--mode accuracy`` is the exception: it loads MODEL.WEIGHTS
and compares the fast path (the TEST.FAST keys, whether or not TEST.FAST.ENABLED is set) with the
float32 model on every image of the dataset (`atrous.deploy.accuracy.compare_fast_path`).
``--model DIR`` benchmarks a model bundle's config.

``--backend onnxruntime|openvino`` exports the random-weights model to a temporary ONNX file /
OpenVINO IR and times it through `atrous.deploy.runtime.ExportedSegmentor` (the same
list-of-dicts call, with the post-processing, as the PyTorch model); ``--int8`` first quantizes
it (`atrous.deploy.quantize.quantize_model`, calibrated on random images: speed does not depend
on the calibration). ``--dtype bf16`` on OpenVINO is its inference precision hint. ``--model
FILE.onnx|FILE.xml`` times an existing exported file instead (INT8 ones too), with the config
from ``--config-file`` or the ``config.yaml`` beside it (for the FLOP count). ``--onnx`` is the
old spelling of ``--backend onnxruntime``. Peak memory is the process's peak RSS while timing,
after the PyTorch model of an exported backend was freed.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from atrous.cli.common import (
    add_allow_partial_flag,
    add_device_flag,
    add_model_source_flags,
    add_overrides_argument,
    parse_size,
    setup_logging,
)

logger = logging.getLogger(__name__)

_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
BACKENDS = ("torch", "onnxruntime", "openvino")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_source_flags(parser)
    parser.add_argument(
        "--mode",
        choices=("infer", "train", "data", "accuracy"),
        default="infer",
        help="accuracy: the TEST.FAST path's agreement with float32 on --dataset, with "
        "MODEL.WEIGHTS (see atrous.deploy.accuracy)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="--mode accuracy: the dataset to compare on (default: the first of DATASETS.TEST)",
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="HxW of the input (default 512x1024; --mode data: of the generated PNGs, 1024x2048)",
    )
    parser.add_argument("--batch", type=int, default=1, help="images per iteration")
    parser.add_argument("--dtype", choices=tuple(_DTYPE_NAMES), default="fp32")
    parser.add_argument("--channels-last", action="store_true", help="channels_last tensors")
    parser.add_argument("--compile", action="store_true", help="torch.compile backbone and head")
    parser.add_argument(
        "--fold-bn",
        action="store_true",
        help="inference: fold BatchNorm into the convolutions (part of the fast path)",
    )
    add_device_flag(parser)
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="inference: what runs the model (default torch; an exported --model file: its own)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="onnxruntime/openvino: quantize the exported model to INT8 first",
    )
    parser.add_argument(
        "--onnx", action="store_true", help="deprecated: the same as --backend onnxruntime"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak TFLOP/s at this dtype, to report model FLOP utilisation",
    )
    parser.add_argument("--json", default=None, metavar="OUT", help="also write results here")
    add_allow_partial_flag(parser)
    add_overrides_argument(parser, example="MODEL.RESNETS.DEPTH 50")


def _setup_cfg(args: argparse.Namespace):
    from atrous.cli.common import load_model_source
    from atrous.config.validate import validate_config

    source = load_model_source(args, weights=False)
    cfg = source.cfg
    _set_backend(args, source.exported)
    # Random weights: speed does not depend on them and a benchmark must not download.
    cfg.MODEL.WEIGHTS = ""
    if args.device:
        cfg.MODEL.DEVICE = args.device
    elif args.backend != "torch" and cfg.MODEL.DEVICE == "auto":
        cfg.MODEL.DEVICE = "cpu"  # where exported graphs are made and run
    cfg.freeze()
    # The device is checked by `run`, which names the --device flag.
    validate_config(cfg, training=args.mode == "train", check_device=False)
    return cfg


def _to_channels_last_hook(module, args):
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def _infer_step(args, cfg, model, inputs, device):
    from atrous.deploy import optimize_for_inference

    if args.backend != "torch":
        return _exported_step(args, cfg, model, inputs)
    runner = optimize_for_inference(
        model,
        dtype=_DTYPE_NAMES[args.dtype],
        channels_last=args.channels_last,
        fold_bn=args.fold_bn,
        compile=args.compile,
        inplace=True,
    )
    return lambda: runner(inputs), "pytorch"


def _set_backend(args: argparse.Namespace, exported) -> None:
    """Resolve ``--backend`` from itself, ``--onnx`` and an exported ``--model`` file."""
    from atrous.deploy.runtime import exported_backend

    if args.onnx:
        # A DeprecationWarning, not a log line: stderr stays one error line when a run fails.
        warnings.warn(
            "--onnx is deprecated: use --backend onnxruntime.", DeprecationWarning, stacklevel=2
        )
        if args.backend not in (None, "onnxruntime"):
            raise SystemExit(f"--onnx contradicts --backend {args.backend}; drop --onnx.")
        args.backend = "onnxruntime"
    args.exported = exported
    if exported is not None:
        own = exported_backend(exported)
        if args.backend not in (None, own):
            raise SystemExit(f"--model {exported} runs with {own}, not --backend {args.backend}.")
        if args.int8:
            raise SystemExit(
                f"--int8 quantizes the config's model; --model {exported} is timed as it is "
                "(an INT8 file runs as INT8): drop --int8."
            )
        args.backend = own
    args.backend = args.backend or "torch"
    if args.backend != "torch" and args.mode != "infer":
        raise SystemExit(f"--backend {args.backend} times inference; use it with --mode infer.")
    if args.int8 and args.backend == "torch":
        raise SystemExit(
            "--int8 runs a quantized exported graph: add --backend openvino or onnxruntime."
        )


def _runtime_precision(args: argparse.Namespace) -> str:
    """OpenVINO's inference precision for ``--dtype``; fp32 (as stored) for ONNX Runtime."""
    ignored = [
        flag
        for flag, on in (("--channels-last", args.channels_last), ("--compile", args.compile),
                         ("--fold-bn", args.fold_bn))
        if on
    ]  # fmt: skip
    if args.backend == "onnxruntime" and args.dtype != "fp32":
        ignored.append("--dtype")
    if ignored:
        logger.warning(
            "--backend %s times the exported graph; %s ignored", args.backend, "/".join(ignored)
        )
    if args.backend == "onnxruntime":
        return "fp32"
    if args.dtype == "fp16":
        raise SystemExit("--backend openvino times fp32 or bf16 on the CPU; use --dtype fp32|bf16.")
    return args.dtype


def _export_graph(args: argparse.Namespace, model, inputs, folder: Path) -> Path:
    """The random-weights model as a file for ``args.backend``, quantized when ``--int8``."""
    from atrous.deploy.export import export_onnx

    model = model.cpu().eval()
    if args.int8:
        from atrous.deploy.quantize import quantize_model

        suffix = ".xml" if args.backend == "openvino" else ".onnx"
        # Random calibration images: the quantized graph's speed does not depend on them.
        calibration = [x["image"][None].float().numpy() for x in inputs]
        output = folder / f"model_int8{suffix}"
        return quantize_model(model, calibration, backend=args.backend, output=output).path
    if args.backend == "onnxruntime":
        return export_onnx(model, folder / "model.onnx")
    from atrous.deploy.openvino import export_openvino

    return export_openvino(model, folder / "model.xml")


def _exported_step(args, cfg, model, inputs):
    """Time an `ExportedSegmentor` over ``--model FILE`` or the exported random-weights model."""
    from atrous.deploy.runtime import load_exported_model

    precision = _runtime_precision(args)
    with tempfile.TemporaryDirectory(prefix="atrous-bench-") as tmp:
        path = args.exported or _export_graph(args, model, inputs, Path(tmp))
        runner = load_exported_model(
            path,
            threads=torch.get_num_threads(),
            precision=precision,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
        )
    return lambda: runner(inputs), f"{runner.runtime} ({runner.precision})"


def _check_onnx_size(size: tuple[int, int], model) -> None:
    from atrous.config import ConfigError
    from atrous.deploy.export import min_input_size

    min_h, min_w = min_input_size(model)
    h, w = size
    if h < min_h or w < min_w:
        # A fixed-kernel ONNX AveragePool cannot pool a feature map smaller than its window;
        # onnxruntime would fail deep inside the session, after the export.
        raise ConfigError(
            f"--size {h}x{w} is below the smallest input the ONNX graph of this config accepts, "
            f"{min_h}x{min_w} (the ASPP pooling window of INPUT.CROP.SIZE): pass --size "
            f"{max(h, min_h)}x{max(w, min_w)} or larger, or use --backend torch."
        )


def _train_step(args, cfg, model, inputs, device):
    """`SimpleTrainer.run_step` on one batch, over and over: the step `atrous train` takes
    (forward under autocast, backward, gradient clipping as configured, optimizer step)."""
    from atrous.deploy.fast import parse_dtype
    from atrous.engine.trainer import SimpleTrainer
    from atrous.solver import build_gradient_clipper, build_optimizer

    dtype = parse_dtype(_DTYPE_NAMES[args.dtype])
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
        model.backbone.register_forward_pre_hook(_to_channels_last_hook)
    if args.compile:
        model.backbone.compile()
        model.sem_seg_head.compile()
    trainer = SimpleTrainer(
        model=model,
        data_loader=itertools.repeat(inputs),
        optimizer=build_optimizer(cfg, model),
        grad_clipper=build_gradient_clipper(cfg),
        amp_dtype=None if dtype == torch.float32 else dtype,
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        grad_scaler=torch.amp.GradScaler(device.type) if dtype == torch.float16 else None,
    )
    return trainer.run_step, "pytorch"


def _run_data(args, cfg) -> int:
    from atrous.data.benchmark import benchmark_data_loading, format_report

    result = benchmark_data_loading(
        cfg, warmup=args.warmup, iters=args.iters, size=args.size or (1024, 2048)
    )
    print(format_report(result))
    if args.json:
        from atrous.utils.timing import write_json

        write_json(
            {"mode": "data", "config_file": args.config_file or args.model, **result}, args.json
        )
        print(f"wrote {args.json}")
    return 0


def _run_accuracy(args: argparse.Namespace) -> int:
    """``--mode accuracy``: `compare_fast_path` of MODEL.WEIGHTS (or the bundle's weights)."""
    from atrous.cli.common import build_model_and_load, config_or_bundle
    from atrous.config.validate import validate_config
    from atrous.deploy.accuracy import compare_fast_path

    cfg, bundle = config_or_bundle(args, device=args.device)
    if args.device:
        cfg.MODEL.DEVICE = args.device
    cfg.freeze()
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if dataset is None:
        raise SystemExit("--mode accuracy needs --dataset NAME (DATASETS.TEST is empty).")
    validate_config(cfg)
    model = bundle.model if bundle is not None else None
    if model is None:
        model = build_model_and_load(cfg, allow_partial=args.allow_partial)
    result = compare_fast_path(cfg, dataset, model=model)
    print(json.dumps(result, indent=2))
    if args.json:
        from atrous.utils.timing import write_json

        write_json({"mode": "accuracy", **result}, args.json)
        print(f"wrote {args.json}")
    return 0


def run(args: argparse.Namespace) -> int:
    """``atrous benchmark``: check the flags, then run the mode that ``--mode`` names."""
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    _check_flags(args)
    if args.mode == "accuracy":
        return _run_accuracy(args)
    cfg = _setup_cfg(args)
    if args.mode == "data":
        return _run_data(args, cfg)
    return _run_speed(args, cfg)


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse flags that make no sense together, naming the flag to change (SystemExit)."""
    if args.batch < 1:
        raise SystemExit(f"--batch must be at least 1, got {args.batch}.")
    if args.onnx and args.mode != "infer":
        raise SystemExit("--onnx times inference; use it with --mode infer.")
    if args.backend not in (None, "torch") and args.mode != "infer":
        raise SystemExit(f"--backend {args.backend} times inference; use it with --mode infer.")
    if args.dataset and args.mode != "accuracy":
        raise SystemExit("--dataset names the dataset of --mode accuracy; add --mode accuracy.")


def _speed_device(args: argparse.Namespace, cfg) -> torch.device:
    """``cfg.MODEL.DEVICE`` as a device, checked against this torch and ``--backend``
    (SystemExit). ``auto`` is the CPU for the exported-graph backends, which run there."""
    from atrous.utils.devices import DeviceError, resolve_device

    requested = str(cfg.MODEL.DEVICE).strip()
    if args.backend not in (None, "torch"):
        if requested.startswith("cuda"):
            raise SystemExit(f"--backend {args.backend} runs on the CPU here; use --device cpu.")
        return torch.device("cpu")
    try:
        return resolve_device(requested)
    except DeviceError as error:
        raise DeviceError(f"--device: {error}") from None


def _flops_or_none(model, inputs: list[dict[str, Any]], *, train: bool) -> int | None:
    """`count_model_flops` of one step on `inputs`, or None (with a warning) if it fails."""
    from atrous.deploy.flops import count_model_flops

    try:
        return count_model_flops(model, inputs, train=train)
    except Exception as error:  # the counter is a report, never a reason to fail the timing
        logger.warning("FLOP counting failed (%s); reporting none.", error)
        return None


def _run_speed(args: argparse.Namespace, cfg) -> int:
    """``--mode infer`` and ``--mode train``: time steps on a random batch, print and save."""
    from atrous.modeling import build_model
    from atrous.utils.timing import (
        BenchmarkResult,
        hardware_name,
        peak_memory,
        random_batch,
        reset_peak_memory,
        time_iterations,
        write_json,
    )

    args.size = args.size or (512, 1024)
    device = _speed_device(args, cfg)
    torch.manual_seed(0)
    # Class weights named by a method come from the training labels; a benchmark reads no data,
    # and the weights' values do not change the speed.
    weights = cfg.MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS
    class_weights = [1.0] * cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES if isinstance(weights, str) else None
    model = build_model(cfg, class_weights=class_weights)
    if args.backend != "torch":
        _check_onnx_size(args.size, model)
    train = args.mode == "train"
    inputs = random_batch(
        args.batch,
        args.size,
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES if train else None,
        ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
    )
    parameters = sum(p.numel() for p in model.parameters())
    flops = _flops_or_none(model, inputs, train=train)
    if device.type != "cpu":
        inputs = [
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
            for x in inputs
        ]

    step, runtime = (_train_step if train else _infer_step)(args, cfg, model, inputs, device)
    if args.backend != "torch":
        # The exported graph's peak RSS, not the PyTorch model's next to it.
        model = None
        gc.collect()
    reset_peak_memory(device)
    times, warmup_s = time_iterations(step, warmup=args.warmup, iters=args.iters, device=device)
    memory, memory_kind = peak_memory(device)

    result = BenchmarkResult.from_times(
        times,
        batch=args.batch,
        flops_per_iter=flops,
        peak_tflops_per_s=args.peak_tflops,
        mode=args.mode,
        config_file=args.config_file or args.model,
        size=args.size,
        # ONNX Runtime runs the graph as stored, whatever --dtype asked
        dtype="fp32" if args.backend == "onnxruntime" else args.dtype,
        channels_last=args.channels_last and args.backend == "torch",
        compile=args.compile and args.backend == "torch",
        fold_bn=args.fold_bn and not train and args.backend == "torch",
        runtime=runtime,
        device=str(device),
        hardware=hardware_name(device),
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        warmup=args.warmup,
        iters=args.iters,
        warmup_s=warmup_s,
        peak_memory_bytes=memory,
        peak_memory_kind=memory_kind,
        parameters=parameters,
        extra={"opts": list(args.opts or [])},
        backend=args.backend,
        int8=args.int8,
        exported_file=None if args.exported is None else str(args.exported),
    )
    print(result.summary())
    if args.json:
        write_json(result.to_dict(), args.json)
        print(f"wrote {args.json}")
    return 0
