"""`atrous predict`: segment images and write label maps, overlays and legends.

atrous predict --config-file cfg.yaml --input photos/ street.jpg "more/*.png" --output out \\
    MODEL.WEIGHTS model_final.pth
atrous predict --config-file cfg.yaml --dataset cityscapes_fine_sem_seg_test --output submit \\
    --cityscapes-labelids MODEL.WEIGHTS DeepLabV3+_R103
atrous predict --model my_bundle --input photos/ --output out

``--model`` takes a model bundle folder (``atrous export --format bundle``) instead of
``--config-file`` + MODEL.WEIGHTS; class names and colours then come from the bundle. It also
takes an exported graph (``.onnx``, OpenVINO ``.xml``, INT8 files too; the config from
``--config-file`` or the ``config.yaml`` beside it), which then computes the same pictures on the
CPU (see `atrous.deploy.runtime`).

For every image ``<name>`` it writes ``<name>_labels.png`` (an indexed PNG: pixel values are class
ids, the palette shows the dataset's colours), ``<name>_overlay.png`` (colours blended with the
photo) and ``<name>_legend.png`` (the classes present). ``--confidence`` adds
``<name>_confidence.png`` (16-bit grayscale: ``round(p * 65535)`` for the top class's softmax
probability ``p``), ``<name>_entropy.png`` (16-bit: ``round(H / log(C) * 65535)``, the entropy over
the C classes, 0 = certain, 65535 = uniform) and ``<name>_confidence_heatmap.png`` (the
probability in colour, dark = unsure); ``--min-confidence P`` dims overlay pixels whose probability
is below P. With ``--cityscapes-labelids`` it writes
only ``<city>_<seq>_<frame>_leftImg8bit_labelIds.png`` files holding Cityscapes labelIds, the
format the Cityscapes benchmark server accepts (zip the output folder and upload it).

Images that cannot be read are reported and skipped; the exit status is 1 when any image failed.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from atrous.cli.common import (
    ModelSource,
    add_allow_partial_flag,
    add_device_flag,
    add_model_source_flags,
    add_overrides_argument,
    add_precision_flag,
    build_run_model,
    load_model_source,
    setup_logging,
)

__all__ = ["add_arguments", "collect_inputs", "run"]

logger = logging.getLogger("atrous.predict")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_source_flags(parser)
    parser.add_argument(
        "--input",
        nargs="+",
        default=[],
        metavar="PATH",
        help="image files, folders (searched recursively) or glob patterns (quote them)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="predict every image of a registered dataset, e.g. cityscapes_fine_sem_seg_test",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--opacity", type=float, default=0.5, help="colour weight in the overlay, 0 to 1"
    )
    parser.add_argument(
        "--confidence",
        action="store_true",
        help="also write the per-pixel max probability and entropy (16-bit PNGs) and a heat map",
    )
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        metavar="P",
        help="dim overlay pixels whose max probability is below P (0 to 1; default 0: none)",
    )
    add_device_flag(parser)
    parser.add_argument(
        "--tta", action="store_true", help="test-time augmentation (TEST.AUG scales and flips)"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument(
        "--cityscapes-labelids",
        action="store_true",
        help="write only Cityscapes labelIds PNGs named for the benchmark server",
    )
    add_precision_flag(parser)
    add_allow_partial_flag(parser)
    add_overrides_argument(parser, example="MODEL.WEIGHTS model.pth")


def _split_overrides(inputs: list[str], opts: list[str]) -> tuple[list[str], list[str]]:
    # `--input a b KEY VALUE`: argparse gives the overrides to --input; they start at the first
    # item that looks like a config key and is not a file.
    for i, item in enumerate(inputs):
        if _CONFIG_KEY.match(item) and not os.path.exists(item):
            return inputs[:i], inputs[i:] + opts
    return inputs, opts


def collect_inputs(items: list[str]) -> list[tuple[str, str]]:
    """Expand files, folders and globs into ``(path, output name)`` pairs, in a stable order.

    The output name keeps the path below a given folder (``city/x_leftImg8bit``) so that images
    with the same file name in different sub-folders do not overwrite each other. Paths that
    do not exist are kept: reading them fails later and is reported with the other failures.
    """
    found: list[tuple[str, str]] = []
    for item in items:
        if os.path.isdir(item):
            files = sorted(
                str(p)
                for p in Path(item).rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            found += [(f, str(Path(os.path.relpath(f, item)).with_suffix(""))) for f in files]
        elif glob.has_magic(item):
            files = sorted(f for f in glob.glob(item, recursive=True) if os.path.isfile(f))
            found += [(f, Path(f).stem) for f in files]
        else:
            found.append((item, Path(item).stem))
    seen: set[str] = set()
    unique_paths: set[str] = set()
    result = []
    for path, name in found:
        key = os.path.abspath(path)
        if key in unique_paths:
            continue
        unique_paths.add(key)
        base, n = name, 1
        while name in seen:
            n += 1
            name = f"{base}-{n}"
        seen.add(name)
        result.append((path, name))
    return result


# What `_write_outputs` appends to an image's name; the longest decides how long a name may be.
_OUTPUT_SUFFIXES = (
    "_labels.png",
    "_overlay.png",
    "_legend.png",
    "_confidence.png",
    "_entropy.png",
    "_confidence_heatmap.png",
)
_MAX_NAME_BYTES = 255  # of one path component, on every common file system


def _skip_own_outputs(items: list[tuple[str, str]], output: str) -> list[tuple[str, str]]:
    """`items` without the pictures an earlier run wrote into `output` (``--output`` inside or
    equal to an ``--input`` folder would otherwise predict its own outputs on every rerun)."""
    out = os.path.realpath(output)
    kept = []
    for path, name in items:
        inside = os.path.realpath(path).startswith(out + os.sep)
        if inside and (path.endswith(_OUTPUT_SUFFIXES) or path.endswith("_labelIds.png")):
            continue
        kept.append((path, name))
    if len(kept) < len(items):
        logger.info(
            "skipped %d files in --output %s that are outputs of an earlier run",
            len(items) - len(kept),
            output,
        )
    return kept


def _fit_name(name: str) -> str:
    """`name` with its last component shortened (and made unique by a hash of the whole name)
    so that every output file name fits in 255 bytes."""
    import hashlib

    head, _, last = name.rpartition("/")
    room = _MAX_NAME_BYTES - max(len(s) for s in _OUTPUT_SUFFIXES)
    if len(last.encode()) <= room:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    short = last.encode()[: room - len(digest) - 1].decode(errors="ignore")
    return f"{head}/{short}-{digest}" if head else f"{short}-{digest}"


def _cityscapes_lut(class_names: tuple[str, ...]) -> np.ndarray:
    from atrous.evaluation.cityscapes import train_id_to_label_id_lut

    try:
        return train_id_to_label_id_lut(class_names)
    except ValueError:
        if len(class_names) != 19:
            raise
        from cityscapesscripts.helpers.labels import trainId2label

        logger.warning("classes are not named; assuming Cityscapes trainIds 0-18")
        return train_id_to_label_id_lut([trainId2label[t].name for t in range(19)])


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _write_outputs(
    out_dir: Path, name: str, image: np.ndarray, result: Any, meta: Any, args: argparse.Namespace
) -> None:
    from PIL import Image

    from atrous.inference.confidence import save_png16
    from atrous.utils.visualize import draw_legend, heatmap, overlay, save_palette_png

    base = out_dir / name
    base.parent.mkdir(parents=True, exist_ok=True)
    colors = meta.stuff_colors
    labels, conf = result.labels, result.confidence
    save_palette_png(f"{base}_labels.png", labels, colors)
    picture = overlay(
        image,
        labels,
        colors,
        opacity=args.opacity,
        confidence=None if conf is None else conf.max_prob,
        min_confidence=args.min_confidence,
    )
    Image.fromarray(picture).save(f"{base}_overlay.png")
    present = [int(c) for c in np.unique(labels) if 0 <= c < meta.num_classes]
    draw_legend(present, meta.stuff_classes, colors).save(f"{base}_legend.png")
    if args.confidence:
        save_png16(f"{base}_confidence.png", conf.max_prob)
        save_png16(f"{base}_entropy.png", conf.entropy)
        Image.fromarray(heatmap(conf.max_prob)).save(f"{base}_confidence_heatmap.png")


def _brief(error: BaseException) -> str:
    """An error as one line of at most a few hundred characters (names can be huge)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def _fail(failures: list[tuple[str, str]], path: str, reason: str) -> None:
    from tqdm import tqdm

    failures.append((path, reason))
    tqdm.write(f"skipping {_short(path)}: {reason}", file=sys.stderr)


def _short(path: str) -> str:
    return path if len(path) <= 200 else path[:100] + "..." + path[-97:]


def _predict_each(
    predictor: Any,
    loaded: list[tuple[str, str, np.ndarray]],
    args: argparse.Namespace,
    failures: list[tuple[str, str]],
) -> list[tuple[tuple[str, str, np.ndarray], Any]]:
    """``(item, result)`` for each loaded image, None as the result of one that failed.

    A batch is predicted together; when that fails, its images are predicted one by one, so
    that the image at fault is named and the others are still predicted.
    """
    confidence = args.confidence or args.min_confidence > 0
    try:
        results = predictor.predict_batch(
            [image for _, _, image in loaded],
            batch_size=args.batch_size,
            return_confidence=confidence,
        )
    except Exception as error:  # reported per image; the batch goes on
        if len(loaded) == 1:
            _fail(failures, loaded[0][0], _brief(error))
            return [(loaded[0], None)]
        out: list[tuple[tuple[str, str, np.ndarray], Any]] = []
        for item in loaded:
            out += _predict_each(predictor, [item], args, failures)
        return out
    return list(zip(loaded, results))


def _write_labelids(out_dir: Path, path: str, name: str, labels: np.ndarray, lut) -> None:
    from PIL import Image

    from atrous.evaluation.cityscapes import cityscapes_prediction_name

    target = out_dir / Path(name).parent / cityscapes_prediction_name(path, "labelIds")
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(lut[labels]).save(target)


def run(args: argparse.Namespace) -> int:
    """Predict every input; returns 0, or 1 when some image failed.

    Other errors (config, weights, output folder) are reported by `atrous.cli.main.dispatch`.
    """
    setup_logging()
    from atrous.config import ConfigError
    from atrous.config.validate import validate_config

    inputs, opts = _split_overrides(list(args.input), list(args.opts or []))
    if not 0.0 <= args.opacity <= 1.0:
        raise ConfigError(f"--opacity must be in [0, 1], got {args.opacity}")
    if not 0.0 <= args.min_confidence <= 1.0:
        raise ConfigError(f"--min-confidence must be in [0, 1], got {args.min_confidence}")
    if args.cityscapes_labelids and (args.confidence or args.min_confidence > 0):
        raise ConfigError(
            "--cityscapes-labelids writes only labelIds files: drop --confidence/--min-confidence"
        )
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    source = load_model_source(args, opts=opts, device=args.device)
    cfg = source.cfg
    if source.exported is not None and not args.device:
        cfg.MODEL.DEVICE = "cpu"  # where exported graphs run
    if args.device:
        cfg.MODEL.DEVICE = args.device
    if args.tta:
        cfg.TEST.AUG.ENABLED = True
    validate_config(cfg)
    items = collect_inputs(inputs)
    if args.dataset:
        from atrous.data import get_dataset_records

        records = get_dataset_records(args.dataset)
        root = os.path.commonpath([r["file_name"] for r in records])
        root = root if os.path.isdir(root) else os.path.dirname(root)
        items += [
            (r["file_name"], str(Path(os.path.relpath(r["file_name"], root)).with_suffix("")))
            for r in records
        ]
    items = _skip_own_outputs(items, args.output)
    if not items:
        raise ConfigError("No input images: give --input files/folders/globs or --dataset NAME.")
    items = [(path, _fit_name(name)) for path, name in items]
    cfg.freeze()

    from atrous.utils.folders import OutputDirLock, check_writable

    check_writable(args.output, label="--output")
    lock = OutputDirLock(args.output)
    note = lock.acquire()
    if note:
        logger.warning(note)
    try:
        return _predict(cfg, args, items, source)
    finally:
        lock.release()


def _predict(
    cfg: Any, args: argparse.Namespace, items: list[tuple[str, str]], source: ModelSource
) -> int:
    from tqdm import tqdm

    from atrous.data.image_io import read_image
    from atrous.inference import Predictor

    out_dir = Path(args.output)
    bundle = source.bundle
    if bundle is not None:
        meta = bundle.metadata
    else:
        from atrous.evaluation.metadata import model_metadata

        meta, _ = model_metadata(cfg, [args.dataset] if args.dataset else None)
    lut = _cityscapes_lut(meta.stuff_classes) if args.cityscapes_labelids else None
    model = build_run_model(source, allow_partial=args.allow_partial, precision=args.precision)
    predictor = Predictor(cfg, model=model, metadata=bundle.metadata if bundle else None)
    failures: list[tuple[str, str]] = []
    written = 0
    with tqdm(total=len(items), desc="predict", unit="img", file=sys.stderr) as bar:
        for chunk in _batches(items, max(1, args.batch_size)):
            loaded = []
            for path, name in chunk:
                try:
                    image = read_image(path, format="RGB", max_pixels=cfg.INPUT.MAX_IMAGE_PIXELS)
                    image = np.ascontiguousarray(image)
                    if lut is not None:
                        from atrous.evaluation.cityscapes import cityscapes_prediction_name

                        cityscapes_prediction_name(path)  # fail early on a non-Cityscapes name
                    loaded.append((path, name, image))
                except Exception as error:
                    _fail(failures, path, _brief(error))
                    bar.update(1)
            if not loaded:
                continue
            for (path, name, image), result in _predict_each(predictor, loaded, args, failures):
                if result is None:
                    bar.update(1)
                    continue
                try:
                    if lut is not None:
                        _write_labelids(out_dir, path, name, result.labels, lut)
                    else:
                        _write_outputs(out_dir, name, image, result, meta, args)
                    written += 1
                except Exception as error:  # one image's outputs; the others still get theirs
                    _fail(failures, path, f"cannot write its outputs: {_brief(error)}")
                bar.update(1)
    logger.info("wrote predictions for %d of %d images to %s", written, len(items), out_dir)
    if failures:
        print(f"{len(failures)} of {len(items)} images failed:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {_short(path)}: {reason}", file=sys.stderr)
        return 1
    return 0
