"""`atrous convert`: turn a detectron2 ``.pkl``, a ``.pth`` or an atrous checkpoint into weights.

Examples::

    # into the model a config builds: atrous' names, the load report training prints
    atrous convert --config-file CONFIG.yaml model_final.pkl model.safetensors
    atrous convert --config-file CONFIG.yaml DeepLabV3+_R103 r103.safetensors MODEL.DEVICE cpu

    # a pure change of container, names as stored
    atrous convert output/model_final.pth model_final.safetensors

The output format follows OUT's suffix: ``.safetensors`` or ``.pth``/``.pt``. With
``--config-file``, IN may also be a URL or model-zoo name. Exit status: 0 written, 1 the input
could not be read or (``--strict``) does not fit the model, 2 a bad command line or config.
"""

from __future__ import annotations

import argparse
import logging

from atrous.cli.common import add_overrides_argument

__all__ = ["add_arguments", "run"]

logger = logging.getLogger("atrous.convert")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-file",
        default=None,
        metavar="FILE",
        help="build this config's model and load IN into it (suffix matching, load report); "
        "without it the weights are re-saved with their names as stored",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="with --config-file: write nothing unless IN fits the model exactly",
    )
    parser.add_argument("input", metavar="IN", help=".pkl, .pth or .safetensors file (or URL)")
    parser.add_argument("output", metavar="OUT", help="file to write: .safetensors or .pth")
    add_overrides_argument(parser, example="MODEL.DEVICE cpu")


def run(args: argparse.Namespace) -> int:
    from atrous.cli.common import load_config, setup_logging

    setup_logging()
    from atrous.checkpoint.convert import (
        check_output_suffix,
        convert_as_stored,
        convert_into_model,
    )
    from atrous.config import ConfigError

    try:
        check_output_suffix(args.output)  # before the input is read
    except ValueError as error:
        raise ConfigError(str(error)) from None  # a usage error (exit status 2)
    if args.config_file is None:
        if args.opts or args.strict:
            raise ConfigError(
                "config overrides and --strict need --config-file (without it nothing is built "
                "to match the weights against)"
            )
        result = convert_as_stored(args.input, args.output)
        print(f"wrote {result.output}: {result.num_tensors} tensors, names as stored")
        return 0

    cfg = load_config(args.config_file, args.opts or [])
    # Weights are saved from the CPU; the file loads onto any device.
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()

    from atrous.modeling import build_model

    model = build_model(cfg)
    result = convert_into_model(args.input, args.output, model, strict=args.strict)
    assert result.report is not None
    report = result.report
    total = (
        len(report.matched)
        + len(report.missing)
        + len(report.shape_mismatched)
        + len(report.reinitialised)
    )
    print(
        f"wrote {result.output}: {result.num_tensors} tensors, {len(report.matched)} of {total} "
        f"model entries loaded from {report.path}"
    )
    return 0
