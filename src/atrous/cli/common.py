"""The one place for what several commands do: read a config, set up logging, parse a size,
build a model with its weights."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ModelSource",
    "add_allow_partial_flag",
    "add_device_flag",
    "add_model_source_flags",
    "add_overrides_argument",
    "add_precision_flag",
    "add_sample_size_flag",
    "build_model_and_load",
    "build_run_model",
    "config_or_bundle",
    "exported_model_file",
    "load_config",
    "load_cpu_model",
    "load_model_source",
    "load_weights",
    "parse_size",
    "setup_logging",
]

logger = logging.getLogger(__name__)

_SIZE = re.compile(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*")


def setup_logging() -> None:
    """INFO logging to stderr for commands that do not run `engine.defaults.setup_logger`.

    A no-op when the process has logging set up already (a test, a program calling a command).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="[%(asctime)s %(levelname)s %(name)s] %(message)s",
            datefmt="%m/%d %H:%M:%S",
        )


def parse_size(text: str, *, flag: str = "--size") -> tuple[int, int]:
    """``"512x1024"`` (also ``512X1024``, ``512,1024``) -> ``(512, 1024)``, as (H, W).

    Meant as an argparse ``type=``: a bad value becomes argparse's usage error (exit status 2);
    `flag` names the option in the message (``functools.partial(parse_size, flag=...)``).

    Raises:
        argparse.ArgumentTypeError: not two positive integers.
    """
    match = _SIZE.fullmatch(text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise argparse.ArgumentTypeError(
            f"{flag} must look like 256x512 (HxW, both at least 1), got {text!r}."
        )
    return int(match.group(1)), int(match.group(2))


def add_allow_partial_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="use MODEL.WEIGHTS even when some model entries are missing from it or have another "
        "shape (they keep their random initialisation)",
    )


def _device_arg(text: str) -> str:
    from atrous.utils.devices import DeviceError, choose_device

    try:
        # Only the form is checked here; whether this machine has the device is the config
        # check's job, which names MODEL.DEVICE.
        choose_device(text, cuda_count=1 << 16)
    except DeviceError:
        raise argparse.ArgumentTypeError(
            f"--device must be auto, cpu, cuda or cuda:N, got {text!r}."
        ) from None
    return text


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda|cuda:N``, which overrides MODEL.DEVICE (`atrous.utils.devices`)."""
    parser.add_argument(
        "--device",
        type=_device_arg,
        default=None,
        metavar="DEVICE",
        help="auto, cpu, cuda or cuda:N; overrides MODEL.DEVICE (default auto: a GPU where one "
        "is visible, else the CPU)",
    )


def add_overrides_argument(parser: argparse.ArgumentParser, *, example: str) -> None:
    """The trailing ``KEY VALUE`` config overrides (``args.opts``, a list), as detectron2's.

    Everything after the first override belongs to it, options included: a flag typed there is
    refused by the config with a message saying to move it (`CfgNode.merge_from_list`).

    Args:
        example: an override shown in ``--help``, e.g. ``"MODEL.WEIGHTS model.pth"``.
    """
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help=f"config overrides as KEY VALUE pairs at the end, e.g. {example}",
    )


def add_sample_size_flag(parser: argparse.ArgumentParser) -> None:
    """``--sample-size HxW`` of the example input an exporter traces (``args.sample_size``)."""
    parser.add_argument(
        "--sample-size",
        type=functools.partial(parse_size, flag="--sample-size"),
        default=None,
        help="HxW of the example input used for tracing (default: just above the minimum)",
    )


def add_model_source_flags(parser: argparse.ArgumentParser) -> None:
    """``--config-file FILE`` and ``--model DIR|FILE``, read by `load_model_source`."""
    parser.add_argument("--config-file", default=None, metavar="FILE", help="model config YAML")
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="a model bundle folder (instead of a config); for evaluate, predict and benchmark "
        "also an exported .onnx or OpenVINO .xml file (its config from --config-file or the "
        "config.yaml beside it) or a folder holding config.yaml and one such file",
    )


def add_precision_flag(parser: argparse.ArgumentParser) -> None:
    """``--precision`` of an exported OpenVINO model (`atrous.deploy.runtime`)."""
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="inference precision of an exported OpenVINO .xml model (its "
        "INFERENCE_PRECISION_HINT; default fp32); ONNX files run as stored",
    )


def load_config(config_file: str, opts: Sequence[str] = ()) -> Any:
    """A fresh default config with `config_file` (and its ``_BASE_`` files) and then the
    ``KEY VALUE`` overrides `opts` merged in; not frozen, not validated.

    Raises:
        FileNotFoundError: `config_file` (or one of its bases) does not exist.
        ConfigError: an unknown key, a bad value or an odd number of override items.
    """
    from atrous.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def load_weights(model: Any, weights: str, *, allow_partial: bool) -> Any:
    """Load `weights` into `model`; refuse weights that leave part of the model random.

    Results of a model whose head (or any other part) kept its random initialisation are
    meaningless, so missing and shape-mismatched entries are an error unless `allow_partial`.
    Unused checkpoint entries (e.g. an auxiliary head) are harmless and only logged.

    Returns:
        The checkpointer's `LoadReport`.

    Raises:
        CheckpointError: the weights do not cover the model (and not `allow_partial`), or they
            cannot be read.
    """
    from atrous.checkpoint import Checkpointer
    from atrous.checkpoint.errors import CheckpointError

    report = Checkpointer(model).load(weights)
    mismatched = report.shape_mismatched + report.reinitialised
    if allow_partial or not (report.missing or mismatched):
        return report
    counts = report.class_counts()
    if counts and not (report.missing or report.shape_mismatched):
        raise CheckpointError(
            f"MODEL.WEIGHTS {weights!r} does not fit this model: it predicts {counts[0]} "
            f"classes, this model {counts[1]}, so the predictions would come from an untrained "
            f"classifier. Set MODEL.SEM_SEG_HEAD.NUM_CLASSES {counts[0]} (and a dataset with "
            "those classes), train on your classes first (training starts from such weights), "
            "or pass --allow-partial to use them anyway."
        )
    if mismatched:
        key = mismatched[0]
        ckpt_shape, model_shape = report.shapes.get(key, ((), ()))
        example = f"{key}: checkpoint {list(ckpt_shape)}, model {list(model_shape)}"
    else:
        example = f"{report.missing[0]} is missing"
    raise CheckpointError(
        f"MODEL.WEIGHTS {weights!r} does not fit this model: {len(report.missing)} entries "
        f"missing and {len(mismatched)} of another shape (e.g. {example}).\n"
        "Make the config match the weights (e.g. MODEL.SEM_SEG_HEAD.NUM_CLASSES), or pass "
        "--allow-partial to use them anyway with those parts left random."
    )


def build_model_and_load(cfg: Any, *, allow_partial: bool) -> Any:
    """The model of `cfg` with MODEL.WEIGHTS loaded by `load_weights` (random when it is empty).

    Raises:
        CheckpointError: see `load_weights`.
    """
    from atrous.modeling import build_model

    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS, allow_partial=allow_partial)
    else:
        logger.warning("MODEL.WEIGHTS is empty: the model keeps its random initialisation")
    return model


def load_cpu_model(
    args: argparse.Namespace, *, check: Callable[[Any], None] | None = None
) -> tuple[Any, Any, Any]:
    """The float32 CPU model that export and quantize trace, from ``--config-file`` or ``--model``.

    A bundle brings its model and weights; a config is checked by `validate_config` before its
    model is built and MODEL.WEIGHTS is loaded (`build_model_and_load`, ``--allow-partial``).

    Args:
        args: the parsed command line (``config_file``, ``model``, ``opts``, ``allow_partial``).
        check: called with the frozen config before any weights are read, so that a command's
            own config check fails in a second instead of after the loading.

    Returns:
        ``(cfg, model, bundle)``: the frozen config (MODEL.DEVICE ``cpu`` for a config file), the
        model in eval mode, and the `LoadedBundle` or None.

    Raises:
        ConfigError: see `config_or_bundle` and `validate_config`; CheckpointError: the weights
            or the bundle cannot be read or do not fit.
    """
    from atrous.config.validate import validate_config

    # Graphs are traced on the CPU in float32; the file runs on any device its runtime supports.
    cfg, bundle = config_or_bundle(args, device="cpu")
    if bundle is None:
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    if check is not None:
        check(cfg)
    if bundle is None:
        validate_config(cfg)  # before the model is built and its weights are read
        model = build_model_and_load(cfg, allow_partial=args.allow_partial)
    else:
        model = bundle.model
    model.eval()
    return cfg, model, bundle


@dataclass
class ModelSource:
    """What ``--config-file`` / ``--model`` name.

    Attributes:
        cfg: the mutable config (with the overrides).
        bundle: the `LoadedBundle` of a bundle folder read with its weights, else None.
        exported: the exported graph file (``.onnx``, ``.xml``) to run, else None; ``cfg``
            then describes its model and MODEL.WEIGHTS is empty.
    """

    cfg: Any
    bundle: Any = None
    exported: Path | None = None


def exported_model_file(model: str | os.PathLike[str] | None) -> Path | None:
    """The exported graph that ``--model`` names, or None for a bundle (or nothing).

    A ``.onnx`` / ``.xml`` path is one; so is a folder without ``bundle.json`` that holds a
    ``config.yaml`` and exactly one such file (what ``atrous quantize`` writes).

    Raises:
        ConfigError: such a folder holds several graph files (name one) or none.
    """
    from atrous.checkpoint.bundle_reader import CONFIG_FILE, is_bundle
    from atrous.config import ConfigError
    from atrous.deploy.runtime import EXPORTED_SUFFIXES

    if not model:
        return None
    path = Path(model)
    if path.suffix.lower() in EXPORTED_SUFFIXES and not path.is_dir():
        return path
    if not path.is_dir() or is_bundle(path) or not (path / CONFIG_FILE).is_file():
        return None
    graphs = sorted(p for p in path.iterdir() if p.suffix.lower() in EXPORTED_SUFFIXES)
    if len(graphs) == 1:
        return graphs[0]
    if graphs:
        raise ConfigError(
            f"--model {path} holds several exported graphs ({', '.join(p.name for p in graphs)}); "
            f"name the one to run, e.g. --model {graphs[0]}."
        )
    raise ConfigError(
        f"--model {path} is neither a model bundle (no bundle.json) nor a folder with an "
        "exported graph (.onnx or .xml beside its config.yaml)."
    )


def _exported_source(args: argparse.Namespace, graph: Path, opts: list[str]) -> ModelSource:
    from atrous.checkpoint.bundle_reader import CONFIG_FILE
    from atrous.config import ConfigError

    if any(key == "MODEL.WEIGHTS" and value for key, value in zip(opts[::2], opts[1::2])):
        raise ConfigError(f"{graph} carries its own weights; do not also set MODEL.WEIGHTS.")
    config_file = args.config_file
    if not config_file:
        beside = graph.parent / CONFIG_FILE
        if not beside.is_file():
            raise ConfigError(
                f"--model {graph} is an exported graph without a {CONFIG_FILE} beside it: give "
                "the config of its model with --config-file."
            )
        config_file = str(beside)
    cfg = load_config(config_file, opts)
    # The graph holds the weights; nothing may read or download the config's.
    cfg.MODEL.WEIGHTS = ""
    return ModelSource(cfg=cfg, exported=graph)


def load_model_source(
    args: argparse.Namespace,
    *,
    opts: list[str] | None = None,
    device: str | None = None,
    weights: bool = True,
) -> ModelSource:
    """The run's config and model source from ``--config-file`` (+ overrides) and ``--model``.

    ``--model`` may name an exported graph (`exported_model_file`); its config then comes from
    ``--config-file`` or the ``config.yaml`` beside the file. Otherwise exactly one of the two
    is given and `config_or_bundle` applies.

    Raises:
        ConfigError: no source, both a config and a bundle, MODEL.WEIGHTS set for an exported
            graph, or a bad key; CheckpointError: a damaged bundle.
    """
    opts = list(args.opts or []) if opts is None else opts
    graph = exported_model_file(args.model)
    if graph is not None:
        return _exported_source(args, graph, opts)
    cfg, bundle = _config_or_bundle(args, opts=opts, device=device, weights=weights)
    return ModelSource(cfg=cfg, bundle=bundle)


def build_run_model(source: ModelSource, *, allow_partial: bool, precision: str | None) -> Any:
    """The model evaluate and predict run: the exported graph, the bundle's or the config's.

    ``precision`` is an exported OpenVINO model's inference precision (None: fp32); it is
    refused for PyTorch models, whose precision is TEST.FAST.DTYPE.

    Raises:
        ConfigError: `precision` for a model it does not apply to, or see
            `atrous.deploy.runtime.build_exported_model`; CheckpointError: see `load_weights`.
    """
    from atrous.config import ConfigError
    from atrous.utils.devices import apply_float32_precision

    apply_float32_precision(source.cfg.FLOAT32_PRECISION)
    if source.exported is None:
        if precision is not None:
            raise ConfigError(
                "--precision sets an exported OpenVINO model's inference precision; a PyTorch "
                "model's is TEST.FAST.DTYPE (with TEST.FAST.ENABLED True)."
            )
        if source.bundle is not None:
            return source.bundle.model
        return build_model_and_load(source.cfg, allow_partial=allow_partial)
    import torch

    from atrous.deploy.runtime import build_exported_model, exported_backend

    if precision not in (None, "fp32") and exported_backend(source.exported) != "openvino":
        raise ConfigError(
            f"--precision {precision} applies to OpenVINO .xml models; ONNX Runtime runs "
            f"{source.exported.name} as it is stored."
        )
    return build_exported_model(
        source.cfg,
        source.exported,
        threads=torch.get_num_threads(),
        precision=precision or "fp32",
    )


def config_or_bundle(
    args: argparse.Namespace,
    *,
    opts: list[str] | None = None,
    device: str | None = None,
    weights: bool = True,
) -> tuple[Any, Any]:
    """`load_model_source` for commands that need the PyTorch model (an exported graph is
    refused): ``(cfg, bundle)``.

    Raises:
        ConfigError: ``--model`` names an exported graph, or see `load_model_source`.
    """
    from atrous.config import ConfigError

    graph = exported_model_file(args.model)
    if graph is not None:
        raise ConfigError(
            f"--model {graph} is an exported graph; this needs the PyTorch model (a bundle "
            "folder, or --config-file with MODEL.WEIGHTS). Exported graphs run with atrous "
            "evaluate, predict and benchmark."
        )
    return _config_or_bundle(args, opts=opts, device=device, weights=weights)


def _config_or_bundle(
    args: argparse.Namespace,
    *,
    opts: list[str] | None = None,
    device: str | None = None,
    weights: bool = True,
) -> tuple[Any, Any]:
    """The run's config from exactly one of ``--config-file`` (+ overrides) and ``--model DIR``.

    A bundle is read whole: its files are checked and its weights loaded into its model, moved to
    `device` (checked to exist first, so that a missing GPU is one clear line). With
    ``weights=False`` only its checked config is read (a benchmark runs random weights).

    Args:
        args: the parsed command line, with ``config_file`` and ``model``.
        opts: ``KEY VALUE`` overrides (default ``args.opts``).
        device: where a bundle's model goes (its ``config.yaml`` says ``cpu``).

    Returns:
        ``(cfg, bundle)``: the mutable config and the `LoadedBundle`, or None for a config file
        (and for a bundle read with ``weights=False``).

    Raises:
        ConfigError: both or neither given, or a bad key; CheckpointError: a damaged bundle.
    """
    from atrous.config import ConfigError

    opts = list(args.opts or []) if opts is None else opts
    if bool(args.model) == bool(args.config_file):
        raise ConfigError("Give either --config-file or --model DIR.")
    if not args.model:
        return load_config(args.config_file, opts), None
    from atrous.checkpoint.bundle_reader import bundle_config, load_bundle
    from atrous.config.validate import check_device_available

    if not weights:
        cfg, _ = bundle_config(args.model, opts=opts)
        return cfg, None
    if device:
        check_device_available(device)
    bundle = load_bundle(args.model, opts=opts, device=device)
    return bundle.cfg, bundle
