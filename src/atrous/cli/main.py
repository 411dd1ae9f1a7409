"""`atrous` command dispatcher.

Each sub-command lives in its own module, imported only when used so that `atrous --help` stays
fast. A command module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("atrous.cli.train", "train a model (detectron2 train_net.py flags)"),
    "evaluate": ("atrous.cli.evaluate", "evaluate a model on the configured test datasets"),
    "predict": ("atrous.cli.predict", "segment images and write label maps and overlays"),
    "export": ("atrous.cli.export", "export a model to ONNX or TorchScript"),
    "benchmark": ("atrous.cli.benchmark", "measure inference, training or data-loading speed"),
    "prepare": ("atrous.cli.prepare", "prepare datasets (Cityscapes trainIds, synthetic data)"),
    "quickstart": ("atrous.cli.quickstart", "prepare synthetic data, train, evaluate, predict"),
    "convert": ("atrous.cli.convert", "convert weights (.pkl, .pth) to .safetensors or .pth"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atrous", description="DeepLabV3 / DeepLabV3+ semantic segmentation."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
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
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints help or the "invalid choice" error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"atrous {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
