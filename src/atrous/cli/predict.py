"""`atrous predict`: segment images and videos and write label maps, overlays and legends.

atrous predict --config-file cfg.yaml --input photos/ street.jpg "more/*.png" --output out \\
    MODEL.WEIGHTS model_final.pth
atrous predict --config-file cfg.yaml --dataset cityscapes_fine_sem_seg_test --output submit \\
    --cityscapes-labelids MODEL.WEIGHTS DeepLabV3+_R103
atrous predict --model my_bundle --input photos/ --output out
atrous predict --model quantized/ --input clip.mp4 --output out --frames

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

A video ``--input`` (``.mp4``, ``.mov``, ``.avi``, ``.mkv``, ... whatever OpenCV's FFmpeg reads;
folders are searched for images only) becomes ``<name>_overlay.mp4`` (MPEG-4, the input's frame
rate and size); ``--frames`` adds each frame's label map as ``<name>_frames/<index>_labels.png``.

Images are read, predicted and written in a pipeline (`atrous.inference.pipeline`); the files
are written by `atrous.inference.writer`, each under a temporary name first, and a file in
``--output`` that no prediction wrote there is never replaced (``.atrous-predictions`` lists the
ones that were). Images that cannot be read or written are reported and skipped; a video that
breaks off (truncated, damaged) keeps the frames before the break and is reported; the exit
status is 1 when any input failed.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import sys
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
    parser.add_argument(
        "--frames",
        action="store_true",
        help="videos: also write each frame's label map, <name>_frames/<index>_labels.png",
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


_MAX_NAME_BYTES = 255  # of one path component, on every common file system
# What a video's outputs append to its name (besides the image outputs of its frames)
_VIDEO_SUFFIXES = ("_overlay.mp4", "_frames")


def _skip_own_outputs(items: list[tuple[str, str]], output: str) -> list[tuple[str, str]]:
    """`items` without the pictures an earlier run wrote into `output` (``--output`` inside or
    equal to an ``--input`` folder would otherwise predict its own outputs on every rerun)."""
    from atrous.inference.writer import LABELIDS_SUFFIX, OUTPUT_SUFFIXES

    out = os.path.realpath(output)
    kept = []
    for path, name in items:
        inside = os.path.realpath(path).startswith(out + os.sep)
        if inside and path.endswith((*OUTPUT_SUFFIXES, LABELIDS_SUFFIX, _VIDEO_SUFFIXES[0])):
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

    from atrous.inference.writer import OUTPUT_SUFFIXES

    head, _, last = name.rpartition("/")
    room = _MAX_NAME_BYTES - max(len(s) for s in (*OUTPUT_SUFFIXES, *_VIDEO_SUFFIXES))
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


def _brief(error: BaseException) -> str:
    """An error as one line of at most a few hundred characters (names can be huge)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def _fail(failures: list[tuple[str, str]], path: str, reason: str) -> None:
    failures.append((path, reason))
    _say(f"skipping {_short(path)}: {reason}")


def _say(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def _short(path: str) -> str:
    return path if len(path) <= 200 else path[:100] + "..." + path[-97:]


def run(args: argparse.Namespace) -> int:
    """Predict every input; returns 0, or 1 when some image failed.

    Other errors (config, weights, output folder) are reported by `atrous.cli.main.dispatch`.
    """
    setup_logging()
    from atrous.config import ConfigError
    from atrous.config.validate import validate_config
    from atrous.data.video import is_video_file

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
    if args.cityscapes_labelids and any(is_video_file(path) for path, _ in items):
        raise ConfigError("--cityscapes-labelids is for Cityscapes images, not videos.")
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
    from atrous.data.video import is_video_file
    from atrous.inference import Predictor
    from atrous.inference.writer import PredictionWriter

    bundle = source.bundle
    if bundle is not None:
        meta = bundle.metadata
    else:
        from atrous.evaluation.metadata import model_metadata

        meta, _ = model_metadata(cfg, [args.dataset] if args.dataset else None)
    lut = _cityscapes_lut(meta.stuff_classes) if args.cityscapes_labelids else None
    model = build_run_model(source, allow_partial=args.allow_partial, precision=args.precision)
    predictor = Predictor(cfg, model=model, metadata=bundle.metadata if bundle else None)
    writer = PredictionWriter(
        args.output,
        class_names=meta.stuff_classes,
        colors=meta.stuff_colors,
        opacity=args.opacity,
        confidence=args.confidence,
        min_confidence=args.min_confidence,
    )
    videos = [(path, name) for path, name in items if is_video_file(path)]
    images = [(path, name) for path, name in items if not is_video_file(path)]
    failures: list[tuple[str, str]] = []
    if images:
        _predict_images(cfg, args, images, predictor, writer, lut, failures)
    for path, name in videos:
        _predict_video(args, path, name, predictor, writer, failures)
    if failures:
        what = "inputs" if videos else "images"
        print(f"{len(failures)} of {len(items)} {what} failed:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {_short(path)}: {reason}", file=sys.stderr)
        return 1
    return 0


def _predict_images(
    cfg: Any,
    args: argparse.Namespace,
    items: list[tuple[str, str]],
    predictor: Any,
    writer: Any,
    lut: np.ndarray | None,
    failures: list[tuple[str, str]],
) -> None:
    """Read, predict and write every image through `atrous.inference.pipeline.run_pipeline`;
    failures are appended to `failures` in the order of `items`."""
    import time

    from tqdm import tqdm

    from atrous.data.image_io import read_image
    from atrous.inference.pipeline import run_pipeline

    confidence = args.confidence or args.min_confidence > 0
    found: dict[int, tuple[str, str]] = {}
    written: list[int] = []

    def load(item: tuple[int, str, str]) -> np.ndarray:
        _, path, _ = item
        image = read_image(path, format="RGB", max_pixels=cfg.INPUT.MAX_IMAGE_PIXELS)
        if lut is not None:
            from atrous.evaluation.cityscapes import cityscapes_prediction_name

            cityscapes_prediction_name(path)  # fail before the model on a non-Cityscapes name
        return np.ascontiguousarray(image)

    def infer(images: list[np.ndarray]) -> list[Any]:
        return predictor.predict_batch(images, batch_size=len(images), return_confidence=confidence)

    def write(item: tuple[int, str, str], image: np.ndarray, result: Any) -> None:
        index, path, name = item
        if lut is not None:
            writer.write_labelids(name, path, result.labels, lut)
        else:
            writer.write(name, image, result)
        written.append(index)

    def failed(item: tuple[int, str, str], stage: str, error: Exception) -> None:
        index, path, _ = item
        reason = _brief(error)
        found[index] = (path, f"cannot write its outputs: {reason}" if stage == "write" else reason)
        _say(f"skipping {_short(path)}: {found[index][1]}")

    start = time.perf_counter()
    with tqdm(total=len(items), desc="predict", unit="img", file=sys.stderr) as bar:
        run_pipeline(
            [(i, path, name) for i, (path, name) in enumerate(items)],
            load=load,
            infer=infer,
            write=write,
            on_failure=failed,
            on_done=lambda item: bar.update(1),
            batch_size=args.batch_size,
        )
    seconds = time.perf_counter() - start
    failures += [found[i] for i in sorted(found)]
    logger.info(
        "wrote predictions for %d of %d images to %s (%.1f images/s)",
        len(written),
        len(items),
        args.output,
        len(items) / max(seconds, 1e-9),
    )


class _VideoFailed(Exception):
    """Ends a video's pipeline: a frame that cannot be predicted or written ends the video."""


def _predict_video(
    args: argparse.Namespace,
    path: str,
    name: str,
    predictor: Any,
    writer: Any,
    failures: list[tuple[str, str]],
) -> None:
    """Write ``<name>_overlay.mp4`` (and with ``--frames`` ``<name>_frames/<index>_labels.png``)
    for one video; a video that breaks off keeps the frames before the break."""
    import time

    from tqdm import tqdm

    from atrous.data.video import VideoReader, VideoReadError
    from atrous.inference.pipeline import run_pipeline
    from atrous.inference.writer import OverlayVideoWriter, PredictionWriter

    confidence = args.confidence or args.min_confidence > 0
    out_dir = Path(args.output)
    frames = None
    if args.frames:
        frames = PredictionWriter(
            out_dir / f"{name}_frames",
            class_names=writer.class_names,
            colors=writer.colors,
            confidence=args.confidence,
            overlays=False,
            legends=False,
        )
    try:
        video = VideoReader(path)
    except VideoReadError as error:
        _fail(failures, path, _brief(error))
        return
    try:
        encoder = OverlayVideoWriter(
            out_dir / f"{name}_overlay.mp4",
            fps=video.fps,
            size=(video.height, video.width),
            writer=writer,
        )
    except OSError as error:  # FileExistsError: the target is not one a prediction wrote
        video.close()
        _fail(failures, path, _brief(error))
        return

    def infer(images: list[np.ndarray]) -> list[Any]:
        return predictor.predict_batch(images, batch_size=len(images), return_confidence=confidence)

    def write(item: tuple[int, np.ndarray], frame: np.ndarray, result: Any) -> None:
        index, _ = item
        encoder.add(frame, result)
        if frames is not None:
            frames.write(f"{index:06d}", frame, result)

    def failed(item: tuple[int, np.ndarray], stage: str, error: Exception) -> None:
        raise _VideoFailed(f"frame {item[0]}: cannot {stage} it: {_brief(error)}") from error

    start = time.perf_counter()
    error: Exception | None = None
    with tqdm(total=video.frame_count, desc=_short(name), unit="frame", file=sys.stderr) as bar:
        try:
            run_pipeline(
                video.frames(),
                load=lambda item: item[1],
                infer=infer,
                write=write,
                on_failure=failed,
                on_done=lambda item: bar.update(1),
                batch_size=args.batch_size,
            )
        except (VideoReadError, _VideoFailed) as caught:
            error = caught
        finally:
            kept = encoder.close()
    seconds = time.perf_counter() - start
    done = encoder.frames
    _say(
        f"{_short(path)}: {done} frames in {seconds:.1f} s ({done / max(seconds, 1e-9):.1f} "
        f"frames/s) -> {kept if kept is not None else 'no video (no frame)'}"
    )
    if error is not None:
        reason = _brief(error) + (f"; kept the {done} frames before it in {kept}" if kept else "")
        failures.append((path, reason))
        _say(f"{_short(path)}: {reason}")
