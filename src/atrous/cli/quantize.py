"""`atrous quantize`: static INT8 post-training quantization for OpenVINO or ONNX Runtime.

Example::

    atrous quantize --config-file CONFIG.yaml --output model_int8 MODEL.WEIGHTS model_final.pth
    atrous quantize --model my_bundle --output model_int8_ort --backend onnxruntime \
        --calib-dataset cityscapes_fine_sem_seg_train --calib-images 200

The calibration images are the first DATASETS.TRAIN dataset (or ``--calib-dataset``), spread
evenly over it, mapped by the test-time pipeline. The output folder holds ``model_int8.xml`` +
``.bin`` (openvino) or ``model_int8.onnx`` (onnxruntime), the ``config.yaml`` and
``quantization.json``; see `atrous.deploy.quantize`. Exit status 2 for usage and config errors,
1 when reading the data or the weights fails.
"""

from __future__ import annotations

import argparse
import functools

from atrous.cli.common import (
    add_allow_partial_flag,
    add_model_source_flags,
    add_overrides_argument,
    add_sample_size_flag,
    load_cpu_model,
    setup_logging,
)

__all__ = ["add_arguments", "run"]


def _positive_int(text: str, *, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{flag} must be a whole number >= 1, got {text!r}")
    return value


def _keep_float(text: str) -> tuple[str, ...]:
    from atrous.deploy.quantize import KEEP_FLOAT_CHOICES

    if text.strip().lower() == "none":
        return ()
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in KEEP_FLOAT_CHOICES]
    if bad or not parts:
        raise argparse.ArgumentTypeError(
            "--keep-float takes 'none' or a comma-separated list of "
            f"{', '.join(KEEP_FLOAT_CHOICES)}, got {text!r}"
        )
    return parts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from atrous.deploy.quantize import BACKENDS, DEFAULT_CALIBRATION_IMAGES, DEFAULT_KEEP_FLOAT

    add_model_source_flags(parser)
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="folder for the INT8 model and its records"
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="openvino", help="runtime to quantize for"
    )
    parser.add_argument(
        "--calib-dataset",
        default=None,
        metavar="NAME",
        help="calibration dataset (default: the first of DATASETS.TRAIN)",
    )
    parser.add_argument(
        "--calib-images",
        type=functools.partial(_positive_int, flag="--calib-images"),
        default=DEFAULT_CALIBRATION_IMAGES,
        metavar="N",
        help=f"number of calibration images (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    parser.add_argument(
        "--keep-float",
        type=_keep_float,
        default=DEFAULT_KEEP_FLOAT,
        metavar="LAYERS",
        help="layers kept in float32: 'none' or a comma-separated list of predictor, "
        f"image_pooling (default: {','.join(DEFAULT_KEEP_FLOAT)})",
    )
    parser.add_argument(
        "--preset",
        choices=("performance", "mixed"),
        default="performance",
        help="NNCF quantization preset (openvino backend; default performance)",
    )
    add_sample_size_flag(parser)
    add_allow_partial_flag(parser)
    add_overrides_argument(parser, example="MODEL.WEIGHTS model.pth")


def _calibration_dataset(args: argparse.Namespace, cfg) -> str:
    from atrous.config import ConfigError

    name = args.calib_dataset or next(iter(cfg.DATASETS.TRAIN), None)
    if not name:
        raise ConfigError("DATASETS.TRAIN is empty: name a calibration dataset (--calib-dataset).")
    return name


def run(args: argparse.Namespace) -> int:
    from atrous.deploy.export import min_input_size
    from atrous.deploy.quantize import (
        CalibrationImages,
        check_output_folder,
        require_backend,
        write_quantized_folder,
    )

    setup_logging()
    # What can fail in a second fails before minutes of loading and quantizing.
    require_backend(args.backend)
    check_output_folder(args.output)
    cfg, model, _ = load_cpu_model(args, check=lambda cfg: _calibration_dataset(args, cfg))
    calib_dataset = _calibration_dataset(args, cfg)
    calibration = CalibrationImages(
        cfg, calib_dataset, args.calib_images, min_size=min_input_size(model)
    )
    folder = write_quantized_folder(
        args.output,
        cfg=cfg,
        model=model,
        calibration=calibration,
        backend=args.backend,
        keep_float=args.keep_float,
        preset=args.preset,
        sample_size=args.sample_size,
    )
    print(
        f"wrote INT8 {args.backend} model folder {folder} ({len(calibration)} calibration images "
        f"of {calib_dataset}; float32 kept for: {', '.join(args.keep_float) or 'nothing'})"
    )
    return 0
