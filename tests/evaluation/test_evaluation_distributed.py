"""Two real gloo processes give exactly the single-process metrics."""

from __future__ import annotations

import json
import math
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from atrous.evaluation import CityscapesSemSegEvaluator, SemSegEvaluator

from .cityscapes_gt import CITYSCAPES_META, make_cityscapes_gt

META = SimpleNamespace(name="toy", stuff_classes=["a", "b", "c", "d"], ignore_label=255)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toy_data(tmp_path, n=5):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        gt = rng.integers(0, 4, size=(24, 32)).astype(np.uint8)
        gt[:3] = 255
        gt[:, -2:] = 3
        path = tmp_path / f"gt_{i}.png"
        Image.fromarray(gt).save(path)
        logits = rng.normal(size=(4, 24, 32)).astype(np.float32)
        logits[gt % 4, np.arange(24)[:, None], np.arange(32)] += 1.0  # better than chance
        items.append(({"file_name": f"img_{i}.png", "sem_seg_file_name": str(path)}, logits))
    return items


def _run_evaluator(make_evaluator, items, rank, world):
    ev = make_evaluator()
    ev.reset()
    # an uneven split: rank 0 gets 3 images, rank 1 gets 2 (with n=5)
    for i, (inp, logits) in enumerate(items):
        if i % world == rank:
            ev.process([inp], [{"sem_seg": torch.from_numpy(logits)}])
    return ev.evaluate()


def _pipeline(cfg, output_dir=None):
    """The --eval-only path: model, sharded test loader, dataset evaluator, inference loop."""
    from atrous.checkpoint import Checkpointer
    from atrous.data import build_test_loader
    from atrous.evaluation import build_evaluator, inference_on_dataset
    from atrous.inference import build_inference_model
    from atrous.modeling import build_model

    model = build_model(cfg)
    Checkpointer(model).load(cfg.MODEL.WEIGHTS)
    name = cfg.DATASETS.TEST[0]
    return inference_on_dataset(
        build_inference_model(cfg, model),
        build_test_loader(cfg, name),
        build_evaluator(cfg, name, output_dir),
    )


def _worker(rank, world, port, tmp_path, kind, payload):
    # `payload`: the (input, logits) items, or the config for "pipeline"; files were written by
    # the parent, since two ranks writing the same files would read each other's half-written PNGs
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.set_num_threads(1)
        if kind == "sem_seg":
            res = _run_evaluator(lambda: SemSegEvaluator(META), payload, rank, world)
        elif kind == "pipeline":
            res = _pipeline(payload)
        else:
            res = _run_evaluator(
                lambda: CityscapesSemSegEvaluator(CITYSCAPES_META), payload, rank, world
            )
        (tmp_path / f"rank{rank}.json").write_text(json.dumps(res))
        # gloo reports "connection closed by peer" if one rank tears down its sockets while
        # the other still finishes the last collective
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        assert (math.isnan(x) and math.isnan(y)) or x == y, (key, x, y)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sem_seg", "cityscapes"])
def test_two_gloo_processes_equal_single_process(tmp_path, kind):
    if kind == "sem_seg":
        items = _toy_data(tmp_path)
        single = _run_evaluator(lambda: SemSegEvaluator(META), items, 0, 1)
    else:
        items = make_cityscapes_gt(tmp_path / "data")
        single = _run_evaluator(lambda: CityscapesSemSegEvaluator(CITYSCAPES_META), items, 0, 1)
    mp.spawn(_worker, args=(2, _free_port(), tmp_path, kind, items), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text(), parse_constant=float)
        _same(got["sem_seg"], single["sem_seg"])


@pytest.mark.slow
def test_eval_pipeline_on_two_ranks_equals_one(tmp_path, synthetic_eval_cfg):
    cfg = synthetic_eval_cfg
    cfg.TEST.AUG.ENABLED = True  # the TTA wrapper runs inside each rank, as with --eval-only
    cfg.TEST.AUG.MIN_SIZES = (128,)
    single = _pipeline(cfg, tmp_path / "single")
    mp.spawn(_worker, args=(2, _free_port(), tmp_path, "pipeline", cfg), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        _same(got["sem_seg"], single["sem_seg"])
    assert {"IoU", "iIoU", "mIoU", "BoundaryIoU-road"} <= set(single["sem_seg"])
