"""Write a model bundle: config, safetensors weights, ``bundle.json`` and a README model card.

The layout and the reader are in `atrous.checkpoint.bundle_reader`; this module gathers what the
folder records (class names and colours from the dataset metadata, normalisation, test sizes,
final metrics found next to the weights, parameter and FLOP counts) and writes it. The folder
appears complete or not at all: it is assembled under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.best import BEST_FILE, BEST_RECORD, read_best_record
from ..checkpoint.bundle_reader import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    CONFIG_FILE,
    META_FILE,
    README_FILE,
    WEIGHTS_FILE,
    is_bundle,
)
from ..checkpoint.weights_io import save_weights
from ..evaluation.metadata import model_metadata
from ..utils.file_io import publish_folder, sha256_file, staging_dir
from ..utils.version import version_metadata

__all__ = ["find_final_metrics", "flops_input_size", "write_bundle"]

logger = logging.getLogger(__name__)


def _is_final_weights(path: Path) -> bool:
    # Metrics in a training folder describe its last model; an earlier snapshot has none.
    if path.stem == "model_final":
        return True
    record = path.parent / "last_checkpoint"
    try:
        return record.is_file() and record.read_text().strip() == path.name
    except OSError:
        return False


def _summary(metrics: dict[str, Any]) -> dict[str, float]:
    # Per-class entries ("IoU-road") would swamp the card; the summary keys are what people cite.
    return {
        k: float(v)
        for k, v in metrics.items()
        if "-" not in k.rsplit("/", 1)[-1] and isinstance(v, int | float)
    }


def find_final_metrics(weights: str, test_datasets: list[str] | tuple[str, ...]) -> dict | None:
    """The final evaluation results that training or ``atrous evaluate`` left next to `weights`.

    For ``model_best.pth``: the evaluation it won (``model_best.json`` and its metrics.json
    line). Otherwise looks, in the weights' folder and only for its final model
    (``model_final.*`` or the file ``last_checkpoint`` names), at
    ``inference/<dataset>/sem_seg_evaluation.json`` for the test datasets, then at the last
    evaluation values of ``metrics.json``.

    Returns:
        ``{"source": file relative to the folder, "dataset": name or None, "iteration": int or
        None, "values": {"sem_seg/mIoU": ..., ...}}``, or None when nothing is found.
    """
    if not weights or not os.path.isfile(weights):
        return None
    path = Path(weights)
    if path.name == BEST_FILE:
        return _best_metrics(path.parent, test_datasets)
    if not _is_final_weights(path):
        return None
    folder = path.parent
    for dataset in test_datasets:
        evaluation = folder / "inference" / dataset / "sem_seg_evaluation.json"
        try:
            data = json.loads(evaluation.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        values = _summary(data.get("metrics", {}) if isinstance(data, dict) else {})
        if values:
            return {
                "source": os.fspath(evaluation.relative_to(folder)),
                "dataset": dataset,
                "iteration": None,
                "values": {f"sem_seg/{k}": v for k, v in values.items()},
            }
    latest: dict[str, float] = {}
    iteration = None
    try:
        lines = (folder / "metrics.json").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        found = _summary({k: v for k, v in record.items() if "sem_seg/" in k})
        if found:
            latest.update(found)
            iteration = record.get("iteration")
    if not latest:
        return None
    return {
        "source": "metrics.json",
        "dataset": test_datasets[0] if len(test_datasets) == 1 else None,
        "iteration": iteration,
        "values": latest,
    }


def _best_metrics(folder: Path, test_datasets: list[str] | tuple[str, ...]) -> dict | None:
    """The evaluation ``model_best.pth`` won: its metrics.json line (the record's iteration, or
    the final evaluation's, recorded one later), or else the record's one value."""
    record = read_best_record(folder)
    if record is None:
        return None
    metric, value, iteration = record["metric"], record["value"], record["iteration"]
    values = {metric: float(value)}
    try:
        lines = (folder / "metrics.json").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("iteration") in (iteration, iteration + 1) and row.get(metric) == value:
            values = _summary({k: v for k, v in row.items() if "sem_seg/" in k}) or values
    return {
        "source": BEST_RECORD,
        "dataset": test_datasets[0] if len(test_datasets) == 1 else None,
        "iteration": iteration,
        "values": values,
    }


def flops_input_size(cfg: Any) -> tuple[int, int]:
    """(H, W) the card's FLOPs are counted at: the test-time short side, at a 1:2 aspect ratio.

    That is what a 1024x2048 Cityscapes frame becomes under INPUT.MIN/MAX_SIZE_TEST; without
    test-time resizing (MIN_SIZE_TEST 0) 512x1024 is used.
    """
    short = int(cfg.INPUT.MIN_SIZE_TEST) or 512
    long = 2 * short
    if int(cfg.INPUT.MAX_SIZE_TEST) > 0 and long > int(cfg.INPUT.MAX_SIZE_TEST):
        scale = int(cfg.INPUT.MAX_SIZE_TEST) / long
        short, long = round(short * scale), int(cfg.INPUT.MAX_SIZE_TEST)
    return short, long


def _count_flops(model: nn.Module, size: tuple[int, int]) -> int | None:
    from .flops import count_model_flops

    image = torch.zeros(3, *size, dtype=torch.uint8)
    try:
        return count_model_flops(model, [{"image": image, "height": size[0], "width": size[1]}])
    except Exception as error:  # the card reports it; it is never a reason to fail the export
        logger.warning("FLOP counting failed (%s); the model card reports none.", error)
        return None


def _weights_source(weights: str) -> str:
    # Where the weights came from, without the exporting user's folders.
    return os.path.basename(weights) if weights and os.path.exists(weights) else weights


def _architecture(cfg: Any) -> dict[str, Any]:
    mobilenet = cfg.MODEL.BACKBONE.NAME == "build_mobilenet_v3_large_backbone"
    if mobilenet:
        width = float(cfg.MODEL.MOBILENET.WIDTH_MULT)
        title = "MobileNetV3-Large" + ("" if width == 1.0 else f" (width {width:g})")
    else:
        title = f"ResNet-{int(cfg.MODEL.RESNETS.DEPTH)}"
    return {
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "head": cfg.MODEL.SEM_SEG_HEAD.NAME,
        "backbone": cfg.MODEL.BACKBONE.NAME,
        "backbone_title": title,
        "backbone_depth": None if mobilenet else int(cfg.MODEL.RESNETS.DEPTH),
        "num_classes": int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
    }


_HEAD_NAMES = {
    "DeepLabV3PlusHead": "DeepLabV3+",
    "DeepLabV3Head": "DeepLabV3",
    "TorchvisionDeepLabHead": "DeepLabV3 (torchvision's head)",
}


def _backbone_title(arch: dict[str, Any]) -> str:
    # bundle.json files written before "backbone_title" existed hold ResNets only.
    return arch.get("backbone_title") or f"ResNet-{arch['backbone_depth']}"


def _format_count(n: int, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n} {unit}".strip()


def model_card(meta: dict[str, Any], *, folder_name: str) -> str:
    """The README.md of a bundle, from its ``bundle.json`` content."""
    arch = meta["architecture"]
    title = _HEAD_NAMES.get(arch["head"], arch["head"])
    lines = [
        f"# {folder_name}: {title}, {_backbone_title(arch)}, {arch['num_classes']} classes",
        "",
        f"A semantic segmentation model bundle written by atrous {meta['atrous_version']} "
        f"(torch {meta['torch_version']}). This folder is all that is needed to run it.",
        "",
        *_card_summary_table(meta, title=title),
        "",
        "## Classes",
        "",
        "| id | name | colour (RGB) |",
        "|---|---|---|",
    ]
    for i, (name, color) in enumerate(zip(meta["classes"], meta["colors"])):
        lines.append(f"| {i} | {name} | {tuple(color)} |")
    lines += _card_usage(folder_name)
    return "\n".join(lines)


def _card_summary_table(meta: dict[str, Any], *, title: str) -> list[str]:
    """The model card's summary table (Markdown rows), from ``bundle.json`` content `meta`.

    Args:
        title: the head's readable name, e.g. "DeepLabV3+".
    """
    arch = meta["architecture"]
    inp = meta["input"]
    flops = meta["flops"]
    lines = [
        "| | |",
        "|---|---|",
        f"| Architecture | {title} head (`{arch['head']}`) on a {_backbone_title(arch)} "
        f"backbone (`{arch['meta_architecture']}`) |",
    ]
    if arch.get("backbone_depth"):
        lines.append(f"| Backbone depth | {arch['backbone_depth']} |")
    lines += [
        f"| Parameters | {_format_count(meta['parameters'])} ({meta['parameters']:,}) |",
    ]
    if flops["flops"] is not None:
        h, w = flops["input_size"]
        lines.append(
            f"| FLOPs | {_format_count(flops['flops'], 'FLOPs')} for one {h}x{w} image "
            "(2 per multiply-add, convolutions and matmuls) |"
        )
    resize = (
        f"shortest side resized to {inp['min_size_test']} (longest at most {inp['max_size_test']})"
        if inp["min_size_test"]
        else "not resized"
    )
    lines += [
        f"| Classes | {arch['num_classes']} (ignore value {meta['ignore_value']}) |",
        f"| Input | {inp['format']} images, 0-255, normalised with mean {inp['pixel_mean']} "
        f"and std {inp['pixel_std']}; {resize} |",
    ]
    datasets = meta["datasets"]
    if datasets["train"]:
        lines.append(f"| Trained on | {', '.join(datasets['train'])} |")
    metrics = meta.get("metrics")
    if metrics:
        where = f" on {metrics['dataset']}" if metrics.get("dataset") else ""
        when = (
            f" at iteration {metrics['iteration']}" if metrics.get("iteration") is not None else ""
        )
        values = ", ".join(f"{k.rsplit('/', 1)[-1]} {v:.2f}" for k, v in metrics["values"].items())
        lines.append(f"| Final metrics | {values}{where}{when} (from `{metrics['source']}`) |")
    return lines


def _card_usage(folder_name: str) -> list[str]:
    """The model card's "Run it" and "Files" sections (Markdown lines) for bundle `folder_name`."""
    return [
        "",
        "## Run it",
        "",
        "```bash",
        f"atrous predict --model {folder_name} --input photos/ --output predictions/",
        f"atrous evaluate --model {folder_name} --dataset DATASET_NAME",
        f"atrous export --model {folder_name} --format onnx --output model.onnx",
        f"atrous benchmark --model {folder_name}",
        "```",
        "",
        "It runs on a GPU where one is visible, else on the CPU (the bundled config says "
        "`MODEL.DEVICE auto`); `--device cpu` or `--device cuda` chooses.",
        "",
        "```python",
        "import numpy as np",
        "from PIL import Image",
        "",
        "from atrous.inference import Predictor",
        "",
        f'predictor = Predictor.from_bundle("{folder_name}")  # or Predictor("{folder_name}")',
        'image = np.asarray(Image.open("street.png").convert("RGB"))',
        "labels = predictor(image).labels  # (H, W) class ids",
        "names = predictor.metadata.stuff_classes  # labels index these",
        "```",
        "",
        "## Files",
        "",
        f"- `{CONFIG_FILE}`: the resolved config (MODEL.WEIGHTS names `{WEIGHTS_FILE}`).",
        f"- `{WEIGHTS_FILE}`: the weights (safetensors: no code runs when loading them).",
        f"- `{META_FILE}`: classes, colours, normalisation, datasets, metrics, versions, and the "
        "sha256 of every file; atrous refuses the bundle when a file no longer matches.",
        "",
    ]


def _dump_json(obj: Any) -> str:
    # Indented for people, with number lists (colours, mean/std, sizes) kept on one line.
    text = json.dumps(obj, indent=2)
    return _NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.eE+-]+,\s*)*-?[\d.eE+-]+)\s*\]")


def _check_replaceable(output: Path) -> None:
    """Refuse an `output` that is not ours to replace: a file, a foreign non-empty folder."""
    if not output.exists():
        return
    if not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a folder; choose another --output.")
    if any(output.iterdir()) and not is_bundle(output):
        raise FileExistsError(
            f"{output} is a non-empty folder that is not a model bundle; refusing to "
            "replace it. Choose a new or empty --output folder."
        )


def write_bundle(
    output: str | os.PathLike[str],
    *,
    cfg: Any,
    model: nn.Module,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (built from and loaded as `cfg` says) as a bundle folder.

    Args:
        output: the folder to create. An existing bundle there (or an empty folder) is replaced;
            any other existing folder is refused.
        cfg: the model's resolved config; MODEL.WEIGHTS tells where to look for final metrics.
        model: the segmentor with its trained weights.
        metrics: the final metrics to record (e.g. those of the bundle being re-exported);
            None looks for them next to MODEL.WEIGHTS (`find_final_metrics`).

    Returns:
        The folder written.

    Raises:
        FileExistsError: `output` is a file or a non-empty folder that is not a bundle.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    metadata, dataset = model_metadata(cfg)
    size = flops_input_size(cfg)
    stamp = version_metadata()
    meta: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        **stamp,
        "architecture": _architecture(cfg),
        "classes": list(metadata.stuff_classes),
        "colors": [list(c) for c in metadata.stuff_colors],
        "ignore_value": int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE),
        "input": {
            "format": cfg.INPUT.FORMAT,
            "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
            "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
            "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
            "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        },
        "datasets": {
            "train": list(cfg.DATASETS.TRAIN),
            "test": list(cfg.DATASETS.TEST),
            "classes_from": dataset,
        },
        "metrics": metrics or find_final_metrics(cfg.MODEL.WEIGHTS, list(cfg.DATASETS.TEST)),
        "source_weights": _weights_source(cfg.MODEL.WEIGHTS),
        "parameters": sum(p.numel() for p in model.parameters()),
        "flops": {"input_size": list(size), "flops": _count_flops(model, size)},
    }
    bundle_cfg = cfg.clone()
    bundle_cfg.defrost()
    bundle_cfg.MODEL.WEIGHTS = WEIGHTS_FILE
    # A bundle must run on the machine it is given to, with or without a GPU.
    bundle_cfg.MODEL.DEVICE = "auto"

    with staging_dir(output.parent, prefix=f".{output.name}.") as tmp:
        (tmp / CONFIG_FILE).write_text(bundle_cfg.dump(), encoding="utf-8")
        save_weights(tmp / WEIGHTS_FILE, model.state_dict(), metadata={"bundle": output.name})
        (tmp / README_FILE).write_text(model_card(meta, folder_name=output.name), encoding="utf-8")
        meta["files"] = {
            name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
            for name in (CONFIG_FILE, WEIGHTS_FILE, README_FILE)
        }
        (tmp / META_FILE).write_text(_dump_json(meta), encoding="utf-8")
        for name in (CONFIG_FILE, README_FILE, META_FILE):  # the weights were fsynced
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
        _check_replaceable(output)
        publish_folder(tmp, output)
    logger.info("Wrote model bundle %s", output)
    return output
