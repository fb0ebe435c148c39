"""The data loaders of a run: an epoch's shuffled batches (this rank's shards of them under
torchrun), from any batch on, and the validation batches."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from densemtl.data import MultiTaskDataset
from densemtl.data.base import tasks_without_valid_pixels
from densemtl.distributed import Comm, ShardedBatches
from densemtl.training.config import TrainConfig
from densemtl.training.inert import max_workers
from densemtl.training.resumable import EpochOrder


def epoch_loader(
    dataset: MultiTaskDataset,
    cfg: TrainConfig,
    device: torch.device,
    comm: Comm,
    *,
    shuffle: bool,
    epoch: int = 0,
    start: int = 0,
) -> DataLoader:
    """Batches of ``dataset``; shuffled in the order of (seed, epoch) from batch ``start`` on. With
    several processes each global batch of ``cfg.batch_size`` is split between the ranks."""
    seed = cfg.seed * 100_003 + epoch
    dataset.set_epoch(epoch)
    pin = device.type == "cuda"
    workers = min(cfg.workers, max_workers())  # what the machine can hold (the CLI says so when it caps)
    dropped = dropped_samples(len(dataset), cfg, comm) if shuffle else 0
    if shuffle and comm.active:  # this rank's part of each global batch
        order: Sampler[int] = EpochOrder(len(dataset), seed, start * cfg.batch_size)
        if dropped:
            order = _Leading(order, len(order) - dropped)  # type: ignore[arg-type]
        shards = ShardedBatches(order, cfg.batch_size, comm.rank, comm.world_size)
        return DataLoader(dataset, batch_sampler=shards, num_workers=workers, pin_memory=pin)  # type: ignore[arg-type]
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        sampler=EpochOrder(len(dataset), seed, start * cfg.batch_size) if shuffle else None,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        num_workers=workers,
        pin_memory=pin,
        drop_last=dropped > 0,
    )


class _Leading(Sampler[int]):
    """The first ``count`` indices of ``order``."""

    def __init__(self, order: Sampler[int], count: int) -> None:
        self.order, self.count = order, max(0, count)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.order), self.count)

    def __len__(self) -> int:
        return self.count


def dropped_samples(n: int, cfg: TrainConfig, comm: Comm) -> int:
    """How many samples the last training batch of an epoch of ``n`` loses: all of it (1 sample)
    when it would hold a single image (batch norm cannot train on one), else none. Under torchrun
    the rule is the global batch's, so that a run gives the same batches in any number of
    processes; with ``--no-sync-bn`` (batch norm per process) also a last batch that leaves a
    process a single image. A last global batch with fewer samples than processes is dropped by
    :class:`~densemtl.distributed.ShardedBatches` already."""
    rest = n % cfg.batch_size
    if n <= cfg.batch_size or rest == 0:
        return 0
    if rest == 1:
        return 1
    if comm.active and cfg.sync_bn is False and comm.world_size <= rest < 2 * comm.world_size:
        return rest
    return 0


def start_notes(train: MultiTaskDataset, val: MultiTaskDataset, cfg: TrainConfig, comm: Comm) -> list[str]:
    """The lines a run prints before it starts about its data (rank 0; the others get none): a
    training batch of one image left out of every epoch, and each task with no valid pixel in a
    split (:func:`~densemtl.data.base.tasks_without_valid_pixels`, a few samples read)."""
    if not comm.is_main:
        return []
    notes = []
    dropped = dropped_samples(len(train), cfg, comm)
    if dropped:
        notes.append(
            f"densemtl: {len(train)} training images in batches of {cfg.batch_size}: the last batch of each "
            f"epoch ({dropped} image{'s' if dropped > 1 else ''}) is left out (batch norm cannot train on one image)"
        )
    for split, dataset in (("train", train), ("val", val)):
        for task in tasks_without_valid_pixels(dataset):
            notes.append(
                f"densemtl: warning: task {task!r} has no valid pixel in the {split} split (in the samples read); "
                f"its {'metrics will be null' if split == 'val' else 'loss will be 0'}"
            )
    return notes
