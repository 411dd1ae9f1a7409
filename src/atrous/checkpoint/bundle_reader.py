"""Model bundles: one folder holding everything needed to run a trained model.

A bundle (written by ``atrous export --format bundle``, see `atrous.deploy.bundle_writer`) is::

    DIR/
      config.yaml        the resolved config; MODEL.WEIGHTS names the bundled file
      model.safetensors  the weights, exactly the model's state_dict
      bundle.json        classes, colours, ignore value, input format and normalisation,
                         test sizes, datasets, final metrics, versions, sha256 of every file
      README.md          the model card

Reading one (`load_bundle`) is the single way every command and `atrous.inference.Predictor`
turns a folder into ``(cfg, model, metadata)``. It refuses, naming the file and what is wrong, a
bundle whose files are missing, were edited after export (sha256), or contradict each other
(bundle.json vs config.yaml, weights that do not fit the config's model).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..utils.file_io import sha256_file
from ..utils.visualize import MAX_CLASS_NAME_LENGTH
from .checkpointer import Checkpointer, LoadReport
from .errors import BundleError, CheckpointError

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "CONFIG_FILE",
    "META_FILE",
    "README_FILE",
    "WEIGHTS_FILE",
    "BundleMetadata",
    "LoadedBundle",
    "bundle_config",
    "is_bundle",
    "load_bundle",
    "read_bundle_metadata",
]

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "atrous-model-bundle"
BUNDLE_FORMAT_VERSION = 1
META_FILE = "bundle.json"
CONFIG_FILE = "config.yaml"
# bundle.json lists a few files, classes and metrics: kilobytes. Anything this large is not one.
_MAX_META_BYTES = 16 << 20
WEIGHTS_FILE = "model.safetensors"
README_FILE = "README.md"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)


@dataclass(frozen=True)
class BundleMetadata:
    """What ``bundle.json`` says about the model (field names follow the dataset metadata's).

    Attributes:
        path: the bundle folder.
        name: the folder's name.
        stuff_classes: class names, index = predicted label.
        stuff_colors: one RGB colour per class.
        ignore_label: the label value of unlabelled pixels in training data.
        input_format: "RGB" or "BGR": the channel order the model takes.
        pixel_mean, pixel_std: the normalisation (0-255 scale, in `input_format` order).
        min_size_test, max_size_test: ResizeShortestEdge sizes used at test time.
        train_datasets, test_datasets: the dataset names of the training config.
        metrics: the final evaluation results when the exporter found them, else None.
        atrous_version, torch_version: what wrote the bundle.
        raw: the whole parsed ``bundle.json``.
    """

    path: Path
    name: str
    stuff_classes: tuple[str, ...]
    stuff_colors: tuple[tuple[int, int, int], ...]
    ignore_label: int
    input_format: str
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    min_size_test: int
    max_size_test: int
    train_datasets: tuple[str, ...] = ()
    test_datasets: tuple[str, ...] = ()
    metrics: dict[str, Any] | None = None
    atrous_version: str = ""
    torch_version: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.stuff_classes)


@dataclass
class LoadedBundle:
    """A bundle turned into a ready model.

    Attributes:
        cfg: the bundle's config with the caller's overrides, not frozen; MODEL.WEIGHTS is the
            absolute path of the bundled weights.
        model: the built model with the bundled weights, in eval mode, on MODEL.DEVICE.
        metadata: the parsed ``bundle.json``.
        report: the (exact) load report of the weights.
    """

    cfg: Any
    model: nn.Module
    metadata: BundleMetadata
    report: LoadReport


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder with a ``bundle.json`` (it may still fail verification)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))


def _plain_name(name: Any) -> bool:
    # Listed files must live in the bundle folder itself: no paths that reach elsewhere.
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and name != META_FILE
    )


def _verify_files(root: Path, meta_path: Path, files: Any) -> None:
    if not isinstance(files, dict) or not all(_plain_name(k) for k in files):
        raise BundleError(
            f"{meta_path}: 'files' must map the bundle's file names (no folders) to their "
            "sha256; the file is damaged. Re-export the bundle."
        )
    for required in REQUIRED_FILES:
        if required not in files:
            raise BundleError(
                f"{meta_path} does not list {required}; every bundle has "
                f"{' and '.join(REQUIRED_FILES)}. Re-export the bundle."
            )
    for name, entry in files.items():
        path = root / name
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(expected, str):
            raise BundleError(f"{meta_path}: the entry for {name} has no 'sha256' string.")
        if path.is_symlink():
            raise BundleError(
                f"{path} is a symbolic link; the files of a bundle must live in its folder. "
                "Copy the file itself into the bundle (cp -L), or re-export the bundle."
            )
        if not path.is_file():
            raise BundleError(
                f"{path} is missing: {meta_path} lists it as part of the bundle. Copy the whole "
                "folder again, or re-export the bundle."
            )
        actual = sha256_file(path)
        if actual != expected.lower():
            raise BundleError(
                f"{path} was changed after the bundle was written: its sha256 is {actual}, "
                f"{meta_path} records {expected}. Restore the original file or re-export the "
                "bundle."
            )


def _get(meta: dict[str, Any], meta_path: Path, key: str, kind: type | tuple[type, ...]) -> Any:
    node: Any = meta
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise BundleError(f"{meta_path} has no '{key}' entry; re-export the bundle.")
        node = node[part]
    if not isinstance(node, kind) or (isinstance(node, bool) and kind is not bool):
        raise BundleError(
            f"{meta_path}: '{key}' is a {type(node).__name__}, not what it should be."
        )
    return node


def read_bundle_metadata(path: str | os.PathLike[str]) -> BundleMetadata:
    """Parse and verify a bundle's ``bundle.json`` and the sha256 of every file it lists.

    Raises:
        BundleError: not a folder, no/invalid ``bundle.json``, a listed file missing or edited.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(
            f"{root} is not a model bundle folder (it does not exist or is a file). Pass the "
            "folder written by `atrous export --format bundle --output DIR`."
        )
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise BundleError(
            f"{meta_path} is missing, so {root} is not a model bundle. Write one with "
            "`atrous export --format bundle --output DIR`."
        )
    if meta_path.is_symlink() or meta_path.stat().st_size > _MAX_META_BYTES:
        raise BundleError(
            f"{meta_path} is a link or larger than {_MAX_META_BYTES >> 20} MiB, so it is not a "
            "bundle description atrous wrote; re-export the bundle."
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(
            f"{meta_path} is not valid JSON ({str(error)[:200]}); re-export the bundle."
        ) from None
    except RecursionError:
        raise BundleError(
            f"{meta_path} is nested too deeply to be a bundle description; re-export the bundle."
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f'{meta_path} does not describe an atrous model bundle (no "format": '
            f'"{BUNDLE_FORMAT}" entry).'
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"{meta_path}: 'format_version' must be a positive integer.")
    if version > BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{meta_path} has bundle format version {version}; this atrous reads version "
            f"{BUNDLE_FORMAT_VERSION}. Upgrade atrous (the bundle was written by atrous "
            f"{meta.get('atrous_version', '?')})."
        )
    _verify_files(root, meta_path, meta.get("files"))

    classes = _get(meta, meta_path, "classes", list)
    colors = _get(meta, meta_path, "colors", list)
    if not all(isinstance(c, str) for c in classes):
        raise BundleError(f"{meta_path}: 'classes' must be a list of class names.")
    long_names = [i for i, c in enumerate(classes) if len(c) > MAX_CLASS_NAME_LENGTH]
    if long_names:
        raise BundleError(
            f"{meta_path}: class {long_names[0]} has a name of {len(classes[long_names[0]]):,} "
            f"characters; names may have at most {MAX_CLASS_NAME_LENGTH}. Re-export the bundle "
            "with shorter class names."
        )
    if not all(
        isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in colors
    ):
        raise BundleError(f"{meta_path}: 'colors' must be a list of [R, G, B] values 0-255.")
    if len(colors) != len(classes):
        raise BundleError(
            f"{meta_path} lists {len(classes)} classes but {len(colors)} colours; they must "
            "pair up. Re-export the bundle."
        )
    numbers = (int, float)
    metrics = meta.get("metrics")
    return BundleMetadata(
        path=root,
        name=root.resolve().name,
        stuff_classes=tuple(classes),
        stuff_colors=tuple((c[0], c[1], c[2]) for c in colors),
        ignore_label=_get(meta, meta_path, "ignore_value", int),
        input_format=_get(meta, meta_path, "input.format", str),
        pixel_mean=tuple(float(v) for v in _get(meta, meta_path, "input.pixel_mean", list)),
        pixel_std=tuple(float(v) for v in _get(meta, meta_path, "input.pixel_std", list)),
        min_size_test=_get(meta, meta_path, "input.min_size_test", numbers),
        max_size_test=_get(meta, meta_path, "input.max_size_test", numbers),
        train_datasets=tuple(meta.get("datasets", {}).get("train", ())),
        test_datasets=tuple(meta.get("datasets", {}).get("test", ())),
        metrics=metrics if isinstance(metrics, dict) else None,
        atrous_version=str(meta.get("atrous_version", "")),
        torch_version=str(meta.get("torch_version", "")),
        raw=meta,
    )


def _disagreements(cfg: Any, meta: BundleMetadata) -> list[str]:
    problems = []
    num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    if meta.num_classes != num_classes:
        problems.append(
            f"it lists {meta.num_classes} class names but MODEL.SEM_SEG_HEAD.NUM_CLASSES is "
            f"{num_classes}"
        )
    if meta.ignore_label != int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE):
        problems.append(
            f"ignore_value is {meta.ignore_label} but MODEL.SEM_SEG_HEAD.IGNORE_VALUE is "
            f"{cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE}"
        )
    if meta.input_format != cfg.INPUT.FORMAT:
        problems.append(
            f"input.format is {meta.input_format} but INPUT.FORMAT is {cfg.INPUT.FORMAT}"
        )
    for key, ours, theirs in (
        ("pixel_mean", meta.pixel_mean, cfg.MODEL.PIXEL_MEAN),
        ("pixel_std", meta.pixel_std, cfg.MODEL.PIXEL_STD),
    ):
        if len(ours) != len(theirs) or not all(
            math.isclose(a, float(b), rel_tol=0, abs_tol=1e-6) for a, b in zip(ours, theirs)
        ):
            problems.append(
                f"input.{key} is {list(ours)} but MODEL.{key.upper()} is {list(theirs)}"
            )
    for key, ours, theirs in (
        ("min_size_test", meta.min_size_test, cfg.INPUT.MIN_SIZE_TEST),
        ("max_size_test", meta.max_size_test, cfg.INPUT.MAX_SIZE_TEST),
    ):
        if ours != theirs:
            problems.append(f"input.{key} is {ours} but INPUT.{key.upper()} is {theirs}")
    return problems


def bundle_config(
    path: str | os.PathLike[str],
    *,
    opts: Sequence[str] = (),
    device: str | None = None,
) -> tuple[Any, BundleMetadata]:
    """A bundle's verified config, with `opts` (``KEY VALUE`` overrides) and `device` applied.

    MODEL.WEIGHTS is set to the absolute path of the bundled weights, so code that loads
    ``cfg.MODEL.WEIGHTS`` itself reads them.

    Raises:
        BundleError: see `read_bundle_metadata`; ``config.yaml`` unreadable or contradicting
            ``bundle.json``; `opts` setting MODEL.WEIGHTS.
        atrous.config.ConfigError: `opts` name unknown keys or bad values.
    """
    from atrous.config import ConfigError, get_cfg

    meta = read_bundle_metadata(path)
    root = meta.path
    config_path = root / CONFIG_FILE
    cfg = get_cfg()
    try:
        cfg.merge_from_file(str(config_path))
    except (ConfigError, FileNotFoundError) as error:
        raise BundleError(f"{config_path} cannot be read as a config: {error}") from None
    if cfg.MODEL.WEIGHTS not in ("", WEIGHTS_FILE):
        raise BundleError(
            f"{config_path} sets MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r}; a bundle's config must name "
            f"its own {WEIGHTS_FILE} (or nothing)."
        )
    problems = _disagreements(cfg, meta)
    if problems:
        raise BundleError(
            f"{root / META_FILE} disagrees with {config_path}: " + "; ".join(problems) + ". "
            "The files do not belong together; re-export the bundle."
        )
    if "MODEL.WEIGHTS" in list(opts)[::2]:
        from ..config import ConfigError

        raise ConfigError(
            f"{root} brings its own weights ({WEIGHTS_FILE}); do not also set MODEL.WEIGHTS."
        )
    cfg.merge_from_list(list(opts))
    if device:
        cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = os.fspath((root / WEIGHTS_FILE).resolve())
    if meta.atrous_version:
        logger.info(
            "Model bundle %s (written by atrous %s, torch %s)",
            root,
            meta.atrous_version,
            meta.torch_version or "?",
        )
    return cfg, meta


def load_bundle(
    path: str | os.PathLike[str],
    *,
    opts: Sequence[str] = (),
    device: str | None = None,
) -> LoadedBundle:
    """Verify a bundle, build its model and load its weights exactly.

    Args:
        path: the bundle folder.
        opts: ``KEY VALUE`` config overrides (e.g. ``TEST.AUG.ENABLED True``); MODEL.WEIGHTS is
            not allowed (the bundle has its weights).
        device: overrides MODEL.DEVICE before the model is built.

    Returns:
        The `LoadedBundle` (config, model in eval mode, metadata, load report).

    Raises:
        BundleError: anything wrong with the bundle, each naming the file at fault, including
            weights whose keys or shapes do not fit the model ``config.yaml`` describes.
        atrous.config.ConfigError: bad `opts`.
    """
    from atrous.modeling import build_model

    cfg, meta = bundle_config(path, opts=opts, device=device)
    weights = cfg.MODEL.WEIGHTS
    model = build_model(cfg)
    try:
        report = Checkpointer(model).load(weights, checkpointables=[], strict=True)
    except CheckpointError as error:
        changed = f" with the overrides {list(opts)}" if opts else ""
        raise BundleError(
            f"{meta.path / WEIGHTS_FILE} does not fit the model {meta.path / CONFIG_FILE} "
            f"describes{changed}: {error}"
        ) from None
    return LoadedBundle(cfg=cfg, model=model.eval(), metadata=meta, report=report)
