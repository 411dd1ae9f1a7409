"""`atrous export`: write a model as ONNX, TorchScript or a model bundle folder.

Example::

    atrous export --format onnx --output model.onnx --config-file CONFIG.yaml \
        MODEL.WEIGHTS model_final.pkl
    atrous export --format bundle --output my_model --config-file CONFIG.yaml \
        MODEL.WEIGHTS output/model_final.pth
    atrous export --format onnx --output model.onnx --model my_model
    atrous export --format openvino --output model.xml --config-file CONFIG.yaml \
        MODEL.WEIGHTS output/model_final.pth

The exported graph maps ``images`` float32 (N, 3, H, W) in INPUT.FORMAT order on the 0-255 scale
to ``logits`` float32 (N, num_classes, H, W); see `atrous.deploy.export`. A bundle is a folder
with the config, ``model.safetensors``, ``bundle.json`` and a README model card; see
`atrous.deploy.bundle`. OpenVINO IR is ``model.xml`` + ``model.bin`` (extra ``atrous[openvino]``);
see `atrous.deploy.openvino`. ``--model DIR`` reads a bundle instead of ``--config-file`` + weights.
"""

from __future__ import annotations

import argparse
import functools

from atrous.cli.common import (
    add_allow_partial_flag,
    add_model_source_flags,
    build_model_and_load,
    parse_size,
    setup_logging,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=("onnx", "openvino", "torchscript", "bundle"), required=True
    )
    add_model_source_flags(parser)
    parser.add_argument(
        "--output", required=True, metavar="PATH", help="file to write (a folder for bundles)"
    )
    parser.add_argument(
        "--sample-size",
        type=functools.partial(parse_size, flag="--sample-size"),
        default=None,
        help="HxW of the example input used for tracing (default: just above the minimum)",
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    add_allow_partial_flag(parser)
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ..."
    )


def _check_openvino(output: str) -> None:
    """Before the model is loaded: the extra is installed and the output is a .xml path."""
    from atrous.deploy.openvino import require_openvino

    try:
        require_openvino("openvino", "onnx", "onnxscript")
    except ImportError as error:
        raise SystemExit(str(error)) from error
    if not output.lower().endswith(".xml"):
        raise SystemExit(f"--format openvino writes a .xml file (and its .bin), got {output!r}")


def run(args: argparse.Namespace) -> int:
    from atrous.checkpoint.errors import CheckpointError
    from atrous.cli.common import config_or_bundle
    from atrous.config import ConfigError
    from atrous.config.validate import validate_config
    from atrous.deploy.export import export_onnx, export_torchscript, min_input_size

    setup_logging()
    if args.format == "openvino":
        _check_openvino(args.output)
    # Exports are made on the CPU in float32; the file runs on any device its runtime supports.
    try:
        cfg, bundle = config_or_bundle(args, device="cpu")
    except (ConfigError, FileNotFoundError, CheckpointError) as error:
        raise SystemExit(str(error)) from error
    if bundle is None:
        cfg.MODEL.DEVICE = "cpu"
        cfg.freeze()
        validate_config(cfg)  # before the model is built and its weights are read
        try:
            model = build_model_and_load(cfg, allow_partial=args.allow_partial)
        except CheckpointError as error:
            # The message already says what to do (local path, mirror); a traceback adds nothing.
            raise SystemExit(f"Cannot load MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r}: {error}") from error
        bundle_metrics = None
    else:
        cfg.freeze()
        model, bundle_metrics = bundle.model, bundle.metadata.metrics
    model.eval()

    if args.format == "bundle":
        from atrous.deploy.bundle import write_bundle

        try:
            path = write_bundle(args.output, cfg=cfg, model=model, metrics=bundle_metrics)
        except FileExistsError as error:
            raise SystemExit(str(error)) from None
        print(f"wrote model bundle {path} (run it with: atrous predict --model {path} ...)")
        return 0
    if args.format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as error:
            raise SystemExit(
                f"ONNX export needs {error.name}: pip install 'atrous[export]'."
            ) from error
        path = export_onnx(
            model, args.output, sample_size=args.sample_size, opset_version=args.opset
        )
    elif args.format == "openvino":
        from atrous.deploy.openvino import export_openvino

        path = export_openvino(
            model, args.output, sample_size=args.sample_size, opset_version=args.opset
        )
    else:
        path = export_torchscript(model, args.output, sample_size=args.sample_size)
    min_h, min_w = min_input_size(model)
    print(
        f"wrote {path} ({args.format}): images float32 (N, 3, H, W) in {cfg.INPUT.FORMAT} order, "
        f"0-255 -> logits float32 (N, {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}, H, W); "
        f"H >= {min_h}, W >= {min_w}"
    )
    return 0
