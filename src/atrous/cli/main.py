"""`atrous` command dispatcher, and the one place where errors become messages and exit codes.

Each sub-command lives in its own module, imported only when used so that `atrous --help` stays
fast. A command module provides ``add_arguments(parser)`` and ``run(args) -> int``.

Errors a user can cause and fix (a bad config, missing data, an unreadable checkpoint, a full
disk, no GPU) end in one ``error: ...`` line on stderr saying what and what to do, with exit
status 2 for usage and config errors and 1 for failures at run time. Their traceback goes to
``OUTPUT_DIR/log.txt`` when the command has set one up, and to the console only with
``--verbose`` (or ``ATROUS_VERBOSE=1``, which also makes every process of a multi-process run print
its own). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any

__all__ = [
    "COMMANDS",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "add_verbose_flag",
    "dispatch",
    "exit_code_for",
    "main",
]

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("atrous.cli.train", "train a model (detectron2 train_net.py flags)"),
    "evaluate": ("atrous.cli.evaluate", "evaluate a model on the configured test datasets"),
    "predict": ("atrous.cli.predict", "segment images and write label maps and overlays"),
    "export": ("atrous.cli.export", "export a model to ONNX, OpenVINO or TorchScript"),
    "quantize": ("atrous.cli.quantize", "INT8 post-training quantization (OpenVINO, ONNX Runtime)"),
    "benchmark": ("atrous.cli.benchmark", "measure inference, training or data-loading speed"),
    "prepare": ("atrous.cli.prepare", "prepare Cityscapes, synthetic, COCO/LabelMe/CVAT data"),
    "quickstart": ("atrous.cli.quickstart", "prepare synthetic data, train, evaluate, predict"),
    "convert": ("atrous.cli.convert", "convert weights (.pkl, .pth) to .safetensors or .pth"),
    "check-dataset": ("atrous.cli.check_dataset", "find defective files, class stats, weights"),
    "demo": ("atrous.cli.demo", "try a model on pictures in the browser (Gradio)"),
}

EXIT_FAILURE = 1  # the run failed: data, checkpoint, device, disk
EXIT_USAGE = 2  # the command line or the config cannot work (argparse uses 2 as well)

_VERBOSE_HELP = "on errors, also print the traceback (train also keeps it in OUTPUT_DIR/log.txt)"

# What to do about an OS error while writing, by errno.
_OS_ADVICE = {
    errno.ENOSPC: "No space left on device while writing {file}: free space or set OUTPUT_DIR "
    "(or --output) elsewhere.",
    errno.EDQUOT: "Disk quota exceeded while writing {file}: free space or set OUTPUT_DIR "
    "(or --output) elsewhere.",
    errno.EROFS: "Read-only file system: cannot write {file}: set OUTPUT_DIR (or --output) to a "
    "writable folder.",
    errno.EACCES: "Permission denied: cannot write {file}: set OUTPUT_DIR (or --output) to a "
    "folder you can write, or fix its permissions.",
    errno.EPERM: "Operation not permitted on {file}: set OUTPUT_DIR (or --output) to a folder "
    "you can write, or fix its permissions.",
}


def _anticipated() -> list[tuple[type[BaseException], int]]:
    """(exception type, exit code), most specific first; imported lazily to keep startup fast."""
    from atrous.checkpoint.errors import CheckpointError
    from atrous.config import ConfigError
    from atrous.data.errors import DatasetError
    from atrous.utils.devices import DeviceError
    from atrous.utils.extras import MissingExtraError
    from atrous.utils.folders import OutputDirError

    table: list[tuple[type[BaseException], int]] = [
        (CheckpointError, EXIT_FAILURE),  # before FileNotFoundError: a missing checkpoint too
        (ConfigError, EXIT_USAGE),
        (DatasetError, EXIT_FAILURE),
        # More processes than GPUs, a launcher without LOCAL_RANK: raised by `engine.launch` in
        # the parent before spawning, or by a torchrun/srun process about its own GPU.
        (DeviceError, EXIT_USAGE),
        (FileNotFoundError, EXIT_USAGE),  # a config file, an input named on the command line
        (FloatingPointError, EXIT_FAILURE),  # the trainer's NaN / infinite loss
        (MissingExtraError, EXIT_USAGE),  # an optional package: the message says what to install
        (OutputDirError, EXIT_FAILURE),  # in use by another run, unwritable, full
        (OSError, EXIT_FAILURE),  # disk full, read-only, permissions, network
    ]
    torch = sys.modules.get("torch")  # only a run that imported torch can run out of memory
    if torch is not None and hasattr(torch, "OutOfMemoryError"):
        table.insert(0, (torch.OutOfMemoryError, EXIT_FAILURE))
    mp = sys.modules.get("torch.multiprocessing")
    if mp is not None and hasattr(mp, "ProcessExitedException"):
        table.append((mp.ProcessExitedException, EXIT_FAILURE))
    return table


def exit_code_for(error: BaseException) -> int | None:
    """The exit status for an anticipated error, None for a bug (which keeps its traceback)."""
    for kind, code in _anticipated():
        if isinstance(error, kind):
            return code
    return None


# torch re-raises a DataLoader worker's exception with the worker's traceback as its message:
# "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback ...\n<type>: <message>".
_WORKER_PREFIX = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal ")


def _message(error: BaseException) -> str:
    text = str(error)
    if _WORKER_PREFIX.match(text):
        kind = type(error)
        name = kind.__qualname__
        if kind.__module__ not in ("builtins", "__main__"):
            name = f"{kind.__module__}.{name}"
        # The last "<type>: " line starts the original message (it may span several lines).
        start = text.rfind(f"\n{name}: ")
        if start >= 0:
            text = text[start + len(name) + 3 :].rstrip("\n")
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
        advice = _OS_ADVICE.get(error.errno or -1)
        if advice is not None:
            target = error.filename or "a file"
            return advice.format(file=target) + f" [Errno {error.errno}]"
    if type(error).__name__ == "OutOfMemoryError":
        first = text.strip().splitlines()[0] if text.strip() else "out of memory"
        return f"{first}. Lower SOLVER.IMS_PER_BATCH or the input size (INPUT.*), or use AMP."
    if type(error).__name__ == "ProcessExitedException":
        return (
            f"a training process died without an error ({text}), e.g. killed for lack of memory; "
            "the other processes were stopped."
        )
    return text


def _log_to_files(error: BaseException) -> None:
    # A log file exists only once engine.defaults.setup_logger ran, which imported that module;
    # checking sys.modules keeps a config error at start-up from importing torch.
    defaults = sys.modules.get("atrous.engine.defaults")
    if defaults is not None:
        defaults.log_exception_to_files(error)


def dispatch(run: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """``run(args)`` with anticipated errors turned into one line on stderr and an exit status.

    Args:
        run: a command's ``run(args) -> int``.
        args: its parsed arguments; ``args.verbose`` (if set) also prints the traceback.

    Returns:
        What `run` returned, or EXIT_USAGE / EXIT_FAILURE for an anticipated error.
    """
    opts = getattr(args, "opts", None)
    if isinstance(opts, list) and "--verbose" in opts:
        # After the first KEY VALUE override argparse hands everything to the overrides.
        args.opts = [o for o in opts if o != "--verbose"]
        args.verbose = True
    verbose = bool(getattr(args, "verbose", False)) or os.environ.get("ATROUS_VERBOSE") == "1"
    saved = os.environ.get("ATROUS_VERBOSE")
    if verbose:
        os.environ["ATROUS_VERBOSE"] = "1"  # spawned training processes inherit it
    try:
        return int(run(args) or 0)
    except Exception as error:
        code = exit_code_for(error)
        if code is None:
            raise
        _log_to_files(error)
        if verbose:
            traceback.print_exception(error, file=sys.stderr)
        print(f"error: {_message(error)}", file=sys.stderr, flush=True)
        return code
    except SystemExit as stop:
        # `raise SystemExit("message")` in a command: print it as an error line and exit with
        # the code its cause maps to (2 without one), keeping the SystemExit for callers.
        if isinstance(stop.code, str):
            cause = stop.__cause__ or stop.__context__
            code = exit_code_for(cause) if cause is not None else None
            print(f"error: {stop.code}", file=sys.stderr, flush=True)
            stop.code = code or EXIT_USAGE
        raise
    finally:
        if saved is None:
            os.environ.pop("ATROUS_VERBOSE", None)
        else:
            os.environ["ATROUS_VERBOSE"] = saved


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """Give `parser` the ``--verbose`` flag unless it has one already."""
    # `train` has it already, among detectron2's flags (train_net.py).
    with contextlib.suppress(argparse.ArgumentError):
        parser.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atrous", description="DeepLabV3 / DeepLabV3+ semantic segmentation."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    add_verbose_flag(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from atrous import __version__

        print(f"atrous {__version__}")
        return 0
    verbose = False
    while argv and argv[0] == "--verbose":
        verbose, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints help or the "invalid choice" error and exits
        return EXIT_USAGE
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"atrous {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    add_verbose_flag(parser)
    args = parser.parse_args(rest)
    args.verbose = verbose or args.verbose
    return dispatch(module.run, args)


if __name__ == "__main__":
    sys.exit(main())
