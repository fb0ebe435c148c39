"""The data loaders of a run: an epoch's shuffled batches (this rank's shards of them under
torchrun), from any batch on, and the validation batches."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from densemtl.data import MultiTaskDataset
from densemtl.distributed import Comm, ShardedBatches
from densemtl.training.config import TrainConfig
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
    if shuffle and comm.active:  # this rank's part of each global batch
        order = EpochOrder(len(dataset), seed, start * cfg.batch_size)
        shards = ShardedBatches(order, cfg.batch_size, comm.rank, comm.world_size)
        return DataLoader(dataset, batch_sampler=shards, num_workers=cfg.workers, pin_memory=pin)  # type: ignore[arg-type]
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        sampler=EpochOrder(len(dataset), seed, start * cfg.batch_size) if shuffle else None,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        num_workers=cfg.workers,
        pin_memory=pin,
    )
