"""Training epochs drawn by a seeded sampler: every item equally often, fixed group shares per batch.

Each epoch is a function of (step seed, epoch) alone, and each item's augmentation draws from its own seed,
so a training resumed at an epoch boundary sees exactly the batches an uninterrupted one would, whatever
the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset, DistributedSampler

from mckd.seeding import derive_seed


def _stream(size: int, count: int, generator: torch.Generator) -> list[int]:
    """`count` indices into range(size): whole random permutations back to back, so counts differ by <= 1."""
    out: list[int] = []
    while len(out) < count:
        out.extend(torch.randperm(size, generator=generator).tolist())
    return out[:count]


def batch_shares(batch_size: int, fractions: Sequence[float]) -> list[int]:
    """How many items of each group one batch holds: `fractions` of `batch_size`, rounded, summing to it."""
    counts = [int(round(f * batch_size)) for f in fractions]
    counts[0] += batch_size - sum(counts)  # rounding remainder to the first group
    return counts


class EpochSampler(DistributedSampler):
    """Yields (index, item seed) pairs for `SeededDataset`: `num_batches` batches per epoch.

    `group_sizes` are the sizes of the datasets concatenated in the training set (e.g. pseudo-labeled, then
    labeled). With `fractions`, every batch holds `batch_shares(batch_size, fractions)` items of each group;
    without, the groups are pooled. Under DDP each rank takes every world_size-th batch. It subclasses
    DistributedSampler only so that Lightning does not wrap it in another one.
    """

    def __init__(self, group_sizes: Sequence[int], num_batches: int, batch_size: int, seed: int,
                 epoch: Callable[[], int] = lambda: 0, fractions: Sequence[float] | None = None):
        if fractions is not None and len(fractions) != len(group_sizes):
            raise ValueError(f"fractions {list(fractions)}: expected one per group {list(group_sizes)}")
        self.group_sizes, self.num_batches, self.batch_size = list(group_sizes), num_batches, batch_size
        self.seed, self.epoch_fn, self.fractions = seed, epoch, fractions

    def _world(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def set_epoch(self, epoch: int) -> None:
        """Unused: the epoch is read from `epoch()` when iteration starts (Lightning sets it too late on resume)."""

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """Every batch of `epoch`, for all ranks: lists of (index into the concatenation, item seed)."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
        total = self.num_batches * self.batch_size
        if self.fractions is None:
            order = _stream(sum(self.group_sizes), total, g)
            flat = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(self.num_batches)]
        else:
            shares = batch_shares(self.batch_size, self.fractions)
            offsets = [sum(self.group_sizes[:k]) for k in range(len(self.group_sizes))]
            streams = [[o + i for i in _stream(n, c * self.num_batches, g)] if c else []
                       for n, c, o in zip(self.group_sizes, shares, offsets)]
            flat = []
            for b in range(self.num_batches):
                batch = [i for s, c in zip(streams, shares) for i in s[b * c:(b + 1) * c]]
                flat.append([batch[j] for j in torch.randperm(len(batch), generator=g).tolist()])
        seeds = torch.randint(0, 2**31 - 1, (total,), generator=g).tolist()
        return [[(i, seeds[b * self.batch_size + k]) for k, i in enumerate(batch)] for b, batch in enumerate(flat)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = self._world()
        mine = self.batches(self.epoch_fn())[rank::world][: len(self) // self.batch_size]
        return iter([item for batch in mine for item in batch])

    def __len__(self) -> int:
        return (self.num_batches // self._world()[1]) * self.batch_size


class SeededDataset(Dataset):
    """`dataset` indexed by (index, seed): the item's random augmentation draws from its own seed."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]
