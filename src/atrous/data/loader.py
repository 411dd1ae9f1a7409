"""Samplers and data loaders for training (infinite, sharded, resumable) and testing.

Training order: one shared stream of dataset indices, a new ``torch.randperm`` per epoch from a
generator seeded with the run's seed (detectron2's TrainingSampler); rank r of W takes stream
positions r, r + W, r + 2W, ... so ranks see different images. Each sample's augmentation is
drawn from a ``RandomState`` seeded by ``(seed, stream position)``, so what a batch contains
depends neither on the number of worker processes nor on which worker maps it.

Exact resume: ``build_train_loader(cfg, start_iter=k)`` yields, as its first batch, the batch an
uninterrupted run yields at iteration k, bit for bit (same images, same crops and flips). The
training loop only needs to store its iteration number. `TrainingSampler.state_dict()` gives the
same information for a sampler used on its own.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from ..utils import comm
from .catalog import get_dataset_records, get_metadata
from .errors import DatasetError
from .mapper import DatasetMapper, build_mapper

__all__ = [
    "InferenceSampler",
    "MapDataset",
    "TrainingSampler",
    "build_test_loader",
    "build_train_loader",
    "sample_rng",
    "shared_random_seed",
    "train_data_seed",
    "trivial_batch_collator",
]

logger = logging.getLogger(__name__)


def sample_rng(seed: int, position: int) -> np.random.RandomState:
    """The augmentation RNG of the sample at `position` of the training stream."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(position)]).generate_state(4)
    return np.random.RandomState(state)


class TrainingSampler(Sampler):
    """Infinite shuffled stream of ``(dataset_index, stream_position)``, sharded by rank.

    Args:
        size: dataset length.
        seed: seed of the shared stream (must be the same on all ranks).
        shuffle: shuffle every epoch (else 0..size-1 repeated).
        rank: this process's rank.
        world_size: number of processes.
        start: number of samples this rank has already consumed (to resume).
    """

    def __init__(
        self,
        size: int,
        *,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size {size}")
        self._size, self._seed, self._shuffle = int(size), int(seed), shuffle
        self._rank, self._world_size = int(rank), int(world_size)
        self._start = int(start)

    def state_dict(self) -> dict:
        """What is needed to rebuild this sampler at its starting point."""
        return {"seed": self._seed, "start": self._start, "size": self._size}

    def load_state_dict(self, state: dict) -> None:
        if int(state["size"]) != self._size:
            raise ValueError(
                f"sampler state is for a dataset of {state['size']} images, this one has "
                f"{self._size}"
            )
        self._seed, self._start = int(state["seed"]), int(state["start"])

    def _stream(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        first = self._rank + self._start * self._world_size
        positions = itertools.count(first, self._world_size)
        stream = itertools.islice(self._stream(), first, None, self._world_size)
        yield from zip(stream, positions)


class InferenceSampler(Sampler):
    """Contiguous, in-order shard of ``range(size)`` for this rank (detectron2's split)."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1) -> None:
        shard, left = divmod(int(size), int(world_size))
        sizes = [shard + int(r < left) for r in range(world_size)]
        begin = sum(sizes[:rank])
        self._indices = range(begin, begin + sizes[rank])

    def __iter__(self):
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)


class MapDataset(Dataset):
    """Records + mapper. Keys are an index, or ``(index, stream_position)`` for training."""

    def __init__(self, records: Sequence[dict], mapper: DatasetMapper, *, seed: int = 0) -> None:
        self.records, self.mapper, self.seed = list(records), mapper, int(seed)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, position = key
            return self.mapper(self.records[index], sample_rng(self.seed, position))
        return self.mapper(self.records[key])


def trivial_batch_collator(batch: list) -> list:
    """Batches are plain lists of dicts."""
    return batch


def _worker_init(worker_id: int) -> None:
    # DataLoader seeds torch per worker from its generator (seeded below); derive numpy's and
    # Python's global seeds from it so any code relying on them is reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def shared_random_seed() -> int:
    """A random seed that is the same on every rank (drawn on rank 0)."""
    seed = int(np.random.randint(2**31)) if comm.get_rank() == 0 else 0
    return int(comm.all_gather_object(seed)[0])


def train_data_seed(cfg) -> int:
    """The seed of a new run's training stream: ``cfg.SEED``, or when negative a random one.

    The one place that decides it; the trainer stores the value in its checkpoints, so a resumed
    run with SEED < 0 continues the stream it started instead of drawing another one. Every rank
    must call this (the random seed is drawn on rank 0 and shared).
    """
    return int(cfg.SEED) if int(cfg.SEED) >= 0 else shared_random_seed()


def _records(names: Sequence[str], num_classes: int, ignore: int) -> list[dict]:
    if isinstance(names, str):
        names = (names,)
    if not names:
        raise DatasetError("DATASETS.TRAIN is empty: name at least one dataset")
    records: list[dict] = []
    for name in names:
        meta = get_metadata(name)
        if meta.num_classes != num_classes:
            raise DatasetError(
                f"dataset {name!r} has {meta.num_classes} classes but "
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {num_classes}; set it to {meta.num_classes}"
            )
        if meta.ignore_label != ignore:
            raise DatasetError(
                f"dataset {name!r} uses ignore label {meta.ignore_label} but "
                f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE is {ignore}; set it to {meta.ignore_label}"
            )
        records.extend(get_dataset_records(name))
    return records


def build_train_loader(
    cfg,
    *,
    mapper: DatasetMapper | None = None,
    start_iter: int = 0,
    seed: int | None = None,
) -> DataLoader:
    """Infinite loader of training batches (lists of mapper dicts) for this rank.

    Args:
        cfg: config (DATASETS.TRAIN, INPUT.*, SOLVER.IMS_PER_BATCH, DATALOADER.NUM_WORKERS,
            SEED, MODEL.SEM_SEG_HEAD.NUM_CLASSES/IGNORE_VALUE).
        mapper: replaces the config's training mapper: a callable ``(record, rng) -> dict``
            (see `DatasetMapper`), called with the sample's ``np.random.RandomState``.
        start_iter: iteration to start at; the first batch equals batch `start_iter` of a run
            started at 0 with the same seed and world size.
        seed: stream seed (default `train_data_seed`: cfg.SEED, or a random seed shared by all
            ranks if negative).

    Returns:
        A DataLoader; iterate it for batches of SOLVER.IMS_PER_BATCH / world_size dicts.

    Raises:
        DatasetError: dataset problems (missing files, class-count mismatch, ...).
        ValueError: IMS_PER_BATCH not divisible by the world size.
    """
    world, rank = comm.get_world_size(), comm.get_rank()
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    if total % world != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({total}) must be divisible by the number of processes ({world})"
        )
    per_rank = total // world
    num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    ignore = int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
    records = _records(cfg.DATASETS.TRAIN, num_classes, ignore)
    if seed is None:
        seed = train_data_seed(cfg)
    if mapper is None:
        # Labels travel to the model (and a GPU) in their narrowest type; the segmentor widens
        # them where it computes the loss.
        mapper = build_mapper(cfg, is_train=True, compact_labels=True)
    sampler = TrainingSampler(
        len(records), seed=seed, rank=rank, world_size=world, start=int(start_iter) * per_rank
    )
    logger.info(
        "training loader: %d images, %d per rank and step, %d workers, seed %d, start iter %d",
        len(records),
        per_rank,
        cfg.DATALOADER.NUM_WORKERS,
        seed,
        start_iter,
    )
    generator = torch.Generator()
    generator.manual_seed(seed + rank)
    workers = int(cfg.DATALOADER.NUM_WORKERS)
    return DataLoader(
        MapDataset(records, mapper, seed=seed),
        batch_sampler=BatchSampler(sampler, per_rank, drop_last=True),
        num_workers=workers,
        collate_fn=trivial_batch_collator,
        worker_init_fn=_worker_init,
        generator=generator,
        persistent_workers=workers > 0,
        pin_memory=_pin_memory(cfg),
    )


def _pin_memory(cfg) -> bool:
    """Pin batches for a GPU model: its ``non_blocking`` copies then overlap the compute."""
    from ..utils.devices import pin_memory_for, resolve_device

    return pin_memory_for(resolve_device(cfg.MODEL.DEVICE))


def build_test_loader(cfg, dataset_name: str, *, mapper: DatasetMapper | None = None) -> DataLoader:
    """In-order loader of batch-1 lists over this rank's shard of a dataset.

    The dicts carry "image" (resized by ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)),
    "sem_seg" (resized the same way, when the record has a label), "height"/"width" (original
    size), "file_name" and "sem_seg_file_name".
    """
    records = get_dataset_records(dataset_name)
    if mapper is None:
        mapper = build_mapper(cfg, is_train=False)
    sampler = InferenceSampler(len(records), rank=comm.get_rank(), world_size=comm.get_world_size())
    workers = int(cfg.DATALOADER.NUM_WORKERS)
    return DataLoader(
        MapDataset(records, mapper),
        batch_size=1,
        sampler=sampler,
        num_workers=workers,
        collate_fn=trivial_batch_collator,
        worker_init_fn=_worker_init,
        pin_memory=_pin_memory(cfg),
    )
