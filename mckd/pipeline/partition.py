"""Disjoint, covering, seeded partitions of the unlabeled split; the same in every process."""

from __future__ import annotations

import numpy as np

from mckd.data.source import Sample


def partition(samples: list[Sample], num_partitions: int, seed: int) -> list[list[Sample]]:
    """Split `samples` into `num_partitions` near-equal disjoint parts, by a seeded shuffle of sorted ids."""
    if num_partitions < 1 or num_partitions > len(samples):
        raise ValueError(f"num_partitions={num_partitions}: expected 1..{len(samples)} (unlabeled samples)")
    ordered = sorted(samples, key=lambda s: s.id)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return [sorted((ordered[i] for i in chunk), key=lambda s: s.id)
            for chunk in np.array_split(order, num_partitions)]


def stage_partitions(samples: list[Sample], num_partitions: int, seed: int, stage: int,
                     repartition: bool) -> list[list[Sample]]:
    """Stage `stage`'s partitions: fixed across stages (original MCKD), or reshuffled per stage."""
    return partition(samples, num_partitions, seed + (1000 * stage if repartition else 0))
