"""`atrous demo`: try a model on pictures in the browser (needs ``pip install 'atrous[demo]'``).

atrous demo --config-file cfg.yaml MODEL.WEIGHTS output/model_final.pth
atrous demo --model my_bundle --port 8080

Serves on http://127.0.0.1:7860 (``--host``/``--port``); only this machine can reach it unless
``--host 0.0.0.0``. ``--share`` asks Gradio for a public link (off by default: the page then talks
to nothing but this process). On CPU the fast path (``TEST.FAST``) is on unless ``--no-fast``.
Images of the config's first test dataset, when on disk, are offered as examples.

Exit status: 0 when stopped with Ctrl-C, 2 for a bad command line or config (also when gradio is
not installed), 1 for a model that cannot be loaded.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import inspect
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from atrous.cli.common import (
    add_allow_partial_flag,
    add_device_flag,
    add_model_source_flags,
    add_overrides_argument,
    build_model_and_load,
    config_or_bundle,
    setup_logging,
)

__all__ = ["add_arguments", "example_images", "run"]

logger = logging.getLogger("atrous.demo")

MAX_EXAMPLES = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_source_flags(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument(
        "--share", action="store_true", help="also make a public gradio.live link (off)"
    )
    add_device_flag(parser)
    parser.add_argument(
        "--no-fast",
        action="store_true",
        help="on CPU, run the model as trained instead of the fast path (TEST.FAST)",
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=MAX_EXAMPLES,
        metavar="N",
        help=f"offer up to N test-set images as examples (default {MAX_EXAMPLES}; 0: none)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=int,
        default=50,
        metavar="MB",
        help="largest upload the demo accepts, in MB (default 50)",
    )
    add_allow_partial_flag(parser)
    add_overrides_argument(parser, example="MODEL.WEIGHTS model.pth")


def example_images(cfg: Any, limit: int) -> list[str]:
    """Up to `limit` image files of the config's test datasets that exist on disk.

    A dataset that is not registered or not downloaded just gives no examples.
    """
    if limit <= 0:
        return []
    from atrous.data import get_dataset_records

    found: list[str] = []
    for name in cfg.DATASETS.TEST:
        try:
            records = get_dataset_records(name)
        except Exception:  # not on disk, not registered: the demo works without
            logger.info("no examples from %s: it is not on disk", name)
            continue
        found += [r["file_name"] for r in records if os.path.isfile(r["file_name"])]
        if len(found) >= limit:
            break
    return found[:limit]


def run(args: argparse.Namespace) -> int:
    setup_logging()
    # Gradio logs every request it makes to itself at start-up through httpx.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from atrous.config import ConfigError
    from atrous.config.validate import validate_config
    from atrous.inference.demo import import_gradio

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    if args.max_upload_mb < 1:
        raise ConfigError(f"--max-upload-mb must be at least 1, got {args.max_upload_mb}")
    # Gradio keeps a copy of every upload and output in its cache folder: a private one, removed
    # with the demo's own temporary files when it stops (Ctrl-C or SIGTERM).
    scratch = Path(tempfile.mkdtemp(prefix="atrous-demo-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(scratch / "gradio"))
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    import_gradio()  # before loading a model: a missing extra is one line, at once
    from atrous.utils.devices import resolve_device

    cfg, bundle = config_or_bundle(args, device=args.device)
    if args.device:
        cfg.MODEL.DEVICE = args.device
    validate_config(cfg)
    if resolve_device(cfg.MODEL.DEVICE).type == "cpu" and not args.no_fast:
        cfg.TEST.FAST.ENABLED = True
    cfg.freeze()

    from atrous.inference import Predictor
    from atrous.inference.demo import build_demo

    if bundle is not None:
        meta = bundle.metadata
        predictor = Predictor(cfg, model=bundle.model, metadata=meta)
        source = f"bundle {args.model}"
    else:
        from atrous.evaluation.metadata import model_metadata

        meta, _ = model_metadata(cfg, None)
        predictor = Predictor(
            cfg, model=build_model_and_load(cfg, allow_partial=args.allow_partial)
        )
        source = f"{args.config_file} · weights {cfg.MODEL.WEIGHTS or '(random)'}"
    fast = f"fast path {cfg.TEST.FAST.DTYPE}" if cfg.TEST.FAST.ENABLED else "fast path off"
    blocks, launch_kwargs = build_demo(
        predictor,
        class_names=meta.stuff_classes,
        colors=meta.stuff_colors,
        examples=example_images(cfg, args.examples),
        model_description=f"Model: {source} · {resolve_device(cfg.MODEL.DEVICE)} · {fast}",
        output_dir=scratch / "labels",
    )
    if "max_file_size" in inspect.signature(blocks.launch).parameters:
        launch_kwargs["max_file_size"] = f"{args.max_upload_mb}mb"
    # quiet: Gradio's own start-up lines suggest share=True; the line below says where to go.
    try:
        _, local_url, share_url = blocks.launch(
            quiet=True,
            prevent_thread_lock=True,
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            inbrowser=False,
            show_error=True,
            ssr_mode=False,
            **launch_kwargs,
        )
    except OSError as error:
        if "port" not in str(error):
            raise
        # Gradio's message speaks of launch() arguments; say which flag to change.
        raise OSError(
            errno.EADDRINUSE,
            f"cannot serve on {args.host}:{args.port}, it is in use: choose another --port",
        ) from error
    logger.info("serving on %s (Ctrl-C to stop)", local_url)
    if share_url:
        logger.info("public link: %s", share_url)
    try:
        blocks.block_thread()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # SystemExit unwinds the main thread, so the temporary folders are removed on the way out.
    raise SystemExit(0)
