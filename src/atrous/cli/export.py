"""`atrous export`: write a model as ONNX, TorchScript or a model bundle folder.

Example::

    atrous export --format onnx --output model.onnx --config-file CONFIG.yaml \
        MODEL.WEIGHTS model_final.pkl
    atrous export --format bundle --output my_model --config-file CONFIG.yaml \
        MODEL.WEIGHTS output/model_final.pth
    atrous export --format onnx --output model.onnx --model my_model
    atrous export --format onnx --end-to-end --output model.onnx --model my_model
    atrous export --format openvino --output model.xml --config-file CONFIG.yaml \
        MODEL.WEIGHTS output/model_final.pth

The exported graph maps ``images`` float32 (N, 3, H, W) in INPUT.FORMAT order on the 0-255 scale
to ``logits`` float32 (N, num_classes, H, W); see `atrous.deploy.export`. A bundle is a folder
with the config, ``model.safetensors``, ``bundle.json`` and a README model card; see
`atrous.deploy.bundle_writer`. OpenVINO IR is ``model.xml`` + ``model.bin`` (extra
``atrous[openvino]``); see `atrous.deploy.openvino`. ``--model DIR`` reads a bundle instead of
``--config-file`` + weights. ``--end-to-end`` exports the one-file deployment graph instead (ONNX,
OpenVINO or TorchScript):
``image`` uint8 (N, H, W, 3) RGB -> ``labels`` int64 (N, H, W) and ``confidence`` float32
(N, H, W), with the class names and colours in its metadata.
"""

from __future__ import annotations

import argparse

from atrous.cli.common import (
    add_allow_partial_flag,
    add_model_source_flags,
    add_overrides_argument,
    add_sample_size_flag,
    load_cpu_model,
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
    add_sample_size_flag(parser)
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="graph from uint8 (N, H, W, 3) RGB images to labels and confidence (N, H, W), "
        "normalisation inside (onnx, torchscript)",
    )
    add_allow_partial_flag(parser)
    add_overrides_argument(parser, example="MODEL.WEIGHTS model.pth")


def _check_openvino(output: str) -> None:
    """Before the model is loaded: the extra is installed and the output is a .xml path."""
    from atrous.deploy.openvino import require_openvino

    require_openvino("openvino", "onnx", "onnxscript")
    if not output.lower().endswith(".xml"):
        raise SystemExit(f"--format openvino writes a .xml file (and its .bin), got {output!r}")


def run(args: argparse.Namespace) -> int:
    from atrous.deploy.export import export_onnx, export_torchscript, min_input_size

    setup_logging()
    if args.end_to_end and args.format == "bundle":
        raise SystemExit(
            "--end-to-end is an option of the graph formats (onnx, openvino, torchscript), not of "
            "--format bundle: a bundle holds weights and config, which predict runs end to end."
        )
    if args.format == "openvino":
        _check_openvino(args.output)
    cfg, model, bundle = load_cpu_model(args)
    if args.format == "bundle":
        from atrous.deploy.bundle_writer import write_bundle

        metrics = bundle.metadata.metrics if bundle is not None else None
        path = write_bundle(args.output, cfg=cfg, model=model, metrics=metrics)
        print(f"wrote model bundle {path} (run it with: atrous predict --model {path} ...)")
        if bundle is None and cfg.MODEL.WEIGHTS:
            from atrous.checkpoint.best import describe_weights

            print(f"weights: {describe_weights(cfg.MODEL.WEIGHTS)}")
        return 0
    graph_kwargs = _end_to_end_kwargs(cfg, bundle) if args.end_to_end else {}
    if args.format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as error:
            from atrous.utils.extras import MissingExtraError

            raise MissingExtraError(
                f"ONNX export needs {error.name}: pip install 'atrous[export]'.", name=error.name
            ) from error
        path = export_onnx(
            model,
            args.output,
            sample_size=args.sample_size,
            opset_version=args.opset,
            **graph_kwargs,
        )
    elif args.format == "openvino":
        from atrous.deploy.openvino import export_openvino

        path = export_openvino(
            model,
            args.output,
            sample_size=args.sample_size,
            opset_version=args.opset,
            **graph_kwargs,
        )
    else:
        path = export_torchscript(model, args.output, sample_size=args.sample_size, **graph_kwargs)
    min_h, min_w = min_input_size(model)
    if args.end_to_end:
        _print_end_to_end(cfg, path, args.format, (min_h, min_w))
        return 0
    print(
        f"wrote {path} ({args.format}): images float32 (N, 3, H, W) in {cfg.INPUT.FORMAT} order, "
        f"0-255 -> logits float32 (N, {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}, H, W); "
        f"H >= {min_h}, W >= {min_w}"
    )
    return 0


def _end_to_end_kwargs(cfg, bundle) -> dict:
    """The exporters' end-to-end keywords: channel order and the class names for the metadata."""
    from atrous.deploy.export import label_metadata

    if bundle is not None:
        classes, colors = bundle.metadata.stuff_classes, bundle.metadata.stuff_colors
    else:
        from atrous.evaluation.metadata import model_metadata

        meta, _ = model_metadata(cfg)
        classes, colors = meta.stuff_classes, meta.stuff_colors
    return {
        "end_to_end": True,
        "input_format": cfg.INPUT.FORMAT,
        "metadata": label_metadata(classes, colors),
    }


def _print_end_to_end(cfg, path, fmt: str, min_size: tuple[int, int]) -> None:
    print(
        f"wrote {path} ({fmt}, end to end): image uint8 (N, H, W, 3) RGB -> labels int64 "
        f"(N, H, W), confidence float32 (N, H, W); H >= {min_size[0]}, W >= {min_size[1]}; "
        "class names in the metadata entry atrous_classes"
    )
    if int(cfg.INPUT.MIN_SIZE_TEST) > 0:
        # The graph has no resize: say what `atrous predict` does first, so results can match.
        print(
            f"note: the graph predicts at the size it is given; atrous predict first resizes the "
            f"short side to INPUT.MIN_SIZE_TEST={cfg.INPUT.MIN_SIZE_TEST} (long side at most "
            f"{cfg.INPUT.MAX_SIZE_TEST}): resize images the same way for the same predictions"
        )
