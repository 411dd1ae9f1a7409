import itertools
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from atrous.config import get_cfg
from atrous.data import (
    DatasetError,
    InferenceSampler,
    TrainingSampler,
    build_test_loader,
    build_train_loader,
    train_data_seed,
)


def _cfg(workers=0, batch=2):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("synthetic_sem_seg_train",)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 19
    cfg.INPUT.MIN_SIZE_TRAIN = (96, 128, 160)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = 1024
    cfg.INPUT.MIN_SIZE_TEST = 0
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (64, 96)
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.SEED = 7
    return cfg


@pytest.fixture
def datasets(synthetic_cityscapes_root, monkeypatch):
    monkeypatch.setenv("ATROUS_DATASETS", str(synthetic_cityscapes_root.parent))
    return synthetic_cityscapes_root.parent


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert [d["file_name"] for d in x] == [d["file_name"] for d in y]
        for d, e in zip(x, y):
            assert torch.equal(d["image"], e["image"]) and torch.equal(d["sem_seg"], e["sem_seg"])


def test_training_sampler_stream_sharding_and_resume():
    stream = [i for i, _ in itertools.islice(iter(TrainingSampler(5, seed=3)), 20)]
    g = torch.Generator()
    g.manual_seed(3)
    expected = [i for _ in range(4) for i in torch.randperm(5, generator=g).tolist()]
    assert stream == expected  # detectron2's TrainingSampler order
    assert sorted(stream[:5]) == list(range(5))
    ranks = [
        list(itertools.islice(iter(TrainingSampler(5, seed=3, rank=r, world_size=2)), 10))
        for r in (0, 1)
    ]
    assert [p for _, p in ranks[0]] == list(range(0, 20, 2))
    assert [i for i, _ in ranks[1]] == stream[1::2]
    resumed = TrainingSampler(5, seed=3, rank=1, world_size=2, start=4)
    assert list(itertools.islice(iter(resumed), 6)) == ranks[1][4:10]
    state = resumed.state_dict()
    other = TrainingSampler(5, seed=0)
    other.load_state_dict({**state, "rank": 0})
    assert other.state_dict() == state


def test_inference_sampler_shards_in_order():
    shards = [list(InferenceSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_same_seed_same_batches_and_exact_resume(datasets):
    cfg = _cfg()
    full = _take(build_train_loader(cfg), 6)
    again = _take(build_train_loader(cfg), 6)
    _same(full, again)
    resumed = _take(build_train_loader(cfg, start_iter=4), 2)
    _same(full[4:], resumed)
    cfg.SEED = 8
    other = _take(build_train_loader(cfg), 2)
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(other[0], full[0]))


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(datasets):
    single = _take(build_train_loader(_cfg(workers=0)), 4)
    multi = _take(build_train_loader(_cfg(workers=2)), 4)
    _same(single, multi)
    resumed = _take(build_train_loader(_cfg(workers=2), start_iter=3), 1)
    _same(single[3:], resumed)


def test_loader_errors(datasets):
    cfg = _cfg(batch=3)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    with pytest.raises(
        DatasetError, match=r"has 19 classes but MODEL\.SEM_SEG_HEAD\.NUM_CLASSES is 5"
    ):
        build_train_loader(cfg)
    cfg.DATASETS.TRAIN = ()
    with pytest.raises(DatasetError, match=r"DATASETS\.TRAIN is empty"):
        build_train_loader(cfg)


def test_test_loader_in_order(datasets):
    batches = list(build_test_loader(_cfg(), "synthetic_sem_seg_val"))
    assert [len(b) for b in batches] == [1, 1, 1, 1]
    names = [b[0]["file_name"] for b in batches]
    assert names == sorted(names)
    assert batches[0][0]["image"].shape == (3, 128, 256)


def _dist_worker(rank, world, init_file, out_dir, datasets_dir):
    os.environ["ATROUS_DATASETS"] = datasets_dir
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = _cfg(batch=4)
        batches = _take(build_train_loader(cfg), 3)
        test = [b[0]["file_name"] for b in build_test_loader(cfg, "synthetic_sem_seg_val")]
        try:
            build_train_loader(_cfg(batch=3))
            error = ""
        except ValueError as e:
            error = str(e)
        torch.save(
            {
                "names": [[d["file_name"] for d in b] for b in batches],
                "images": [[d["image"] for d in b] for b in batches],
                "test": test,
                "error": error,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_ranks_take_interleaved_slices_of_one_stream(datasets, tmp_path):
    mp.spawn(
        _dist_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path), str(datasets)),
        nprocs=2,
        join=True,
    )
    out = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # One process with batch 1 walks the same stream: position p goes to rank p % 2.
    single = [b[0] for b in _take(build_train_loader(_cfg(batch=1)), 12)]
    for rank in range(2):
        flat_names = [n for b in out[rank]["names"] for n in b]
        flat_images = [im for b in out[rank]["images"] for im in b]
        assert len(out[rank]["names"][0]) == 2  # IMS_PER_BATCH 4 over 2 ranks
        mine = single[rank::2]
        assert flat_names == [d["file_name"] for d in mine]
        assert all(torch.equal(a, d["image"]) for a, d in zip(flat_images, mine))
    all_test = out[0]["test"] + out[1]["test"]
    assert len(out[0]["test"]) == 2 and all_test == sorted(all_test) and len(set(all_test)) == 4
    assert "must be divisible by the number of processes (2)" in out[0]["error"]


def test_train_data_seed_is_the_config_seed_or_a_drawn_one(datasets):
    cfg = _cfg()
    assert train_data_seed(cfg) == 7
    assert build_train_loader(cfg).dataset.seed == 7  # the loader's default is the same choice
    cfg.SEED = -1
    np.random.seed(3)
    drawn = train_data_seed(cfg)
    np.random.seed(3)
    assert 0 <= drawn < 2**31 and train_data_seed(cfg) == drawn


def test_training_labels_travel_narrow_with_the_values_of_detectron2s_int64(datasets):
    from atrous.data import DatasetMapper, build_mapper
    from atrous.data.mapper import compact_label_dtype

    cfg = _cfg()
    batch = _take(build_train_loader(cfg), 2)
    # The same samples through detectron2's int64 mapper: equal values, an eighth of the bytes.
    wide = _take(build_train_loader(cfg, mapper=build_mapper(cfg, is_train=True)), 2)
    for narrow_batch, wide_batch in zip(batch, wide):
        for narrow, full in zip(narrow_batch, wide_batch):
            assert narrow["sem_seg"].dtype == torch.uint8 and full["sem_seg"].dtype == torch.int64
            assert torch.equal(narrow["sem_seg"].long(), full["sem_seg"])
    assert isinstance(build_mapper(cfg, is_train=False), DatasetMapper)
    assert build_mapper(cfg, is_train=False).label_dtype is np.int64  # test-time: detectron2's
    assert compact_label_dtype(19, 255) is np.uint8
    assert compact_label_dtype(300, 255) is np.int16  # ADE20K-full sized class lists
    assert compact_label_dtype(19, 65535) is np.int32
    assert compact_label_dtype(19, -1) is np.int16


@pytest.mark.parametrize(("device", "pinned"), [("cpu", False), ("cuda", True)])
def test_loaders_pin_memory_for_a_gpu_model_only(datasets, monkeypatch, device, pinned):
    from atrous.utils import devices

    # As on a GPU machine: "cuda" resolves (nothing is copied to a device here).
    monkeypatch.setattr(devices, "visible_gpu_count", lambda: 1)
    cfg = _cfg()
    cfg.MODEL.DEVICE = device
    cfg.DATASETS.TEST = ("synthetic_sem_seg_val",)
    assert build_train_loader(cfg).pin_memory is pinned
    assert build_test_loader(cfg, "synthetic_sem_seg_val").pin_memory is pinned
