"""The one place for what several commands do: read a config, set up logging, parse a size,
build a model with its weights."""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "add_allow_partial_flag",
    "add_model_source_flags",
    "build_model_and_load",
    "config_or_bundle",
    "load_config",
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


def add_model_source_flags(parser: argparse.ArgumentParser) -> None:
    """``--config-file FILE`` and ``--model DIR``, of which `config_or_bundle` takes exactly one."""
    parser.add_argument("--config-file", default=None, metavar="FILE", help="model config YAML")
    parser.add_argument(
        "--model", default=None, metavar="DIR", help="a model bundle folder (instead of a config)"
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
    if allow_partial or not (report.missing or report.shape_mismatched):
        return report
    if report.shape_mismatched:
        key = report.shape_mismatched[0]
        ckpt_shape, model_shape = report.shapes.get(key, ((), ()))
        example = f"{key}: checkpoint {list(ckpt_shape)}, model {list(model_shape)}"
    else:
        example = f"{report.missing[0]} is missing"
    raise CheckpointError(
        f"MODEL.WEIGHTS {weights!r} does not fit this model: {len(report.missing)} entries "
        f"missing and {len(report.shape_mismatched)} of another shape (e.g. {example}).\n"
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


def config_or_bundle(
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
    from atrous.checkpoint.bundle import bundle_config, load_bundle
    from atrous.config.validate import check_device_available

    if not weights:
        cfg, _ = bundle_config(args.model, opts=opts)
        return cfg, None
    if device:
        check_device_available(device)
    bundle = load_bundle(args.model, opts=opts, device=device)
    return bundle.cfg, bundle
