"""Disjoint, covering, seeded partitions of the unlabeled split; the same in every process."""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from mckd.data.source import Sample
from mckd.data.splits import shuffled
from mckd.errors import MckdError


class PartitionError(MckdError, ValueError):
    """The unlabeled split cannot be partitioned as configured."""


def partition(samples: list[Sample], num_partitions: int, seed: int) -> list[list[Sample]]:
    """Split `samples` into `num_partitions` near-equal disjoint parts, by a seeded shuffle of sorted ids."""
    if num_partitions < 1 or num_partitions > len(samples):
        raise PartitionError(f"num_partitions={num_partitions}: expected 1..{len(samples)} (the unlabeled split "
                             f"has {len(samples)} images)")
    order = shuffled(samples, seed)
    return [sorted((order[i] for i in chunk), key=lambda s: s.id)
            for chunk in np.array_split(np.arange(len(order)), num_partitions)]


def group_key(sample_id: str, pattern: str) -> str:
    """The group of a sample: the first capture group of `pattern` (or its whole match) in the id."""
    match = re.search(pattern, sample_id)
    if match is None:
        raise PartitionError(f"partition_group={pattern!r} does not match the unlabeled sample id {sample_id!r}")
    return match.group(1) if match.groups() else match.group(0)


def grouped_partition(samples: list[Sample], num_partitions: int, seed: int, pattern: str) -> list[list[Sample]]:
    """Partitions that keep each group (e.g. one video sequence) whole: groups in a seeded order, each to the
    partition with the fewest samples so far."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: s.id):
        groups[group_key(s.id, pattern)].append(s)
    if len(groups) < num_partitions:
        raise PartitionError(f"partition_group={pattern!r} finds {len(groups)} groups ({', '.join(sorted(groups))}): "
                             f"expected at least num_partitions={num_partitions}")
    keys = sorted(groups)
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    order.sort(key=lambda k: -len(groups[k]))  # largest first (stable: ties keep the seeded order) for balance
    parts: list[list[Sample]] = [[] for _ in range(num_partitions)]
    for key in order:
        min(parts, key=len).extend(groups[key])
    return [sorted(part, key=lambda s: s.id) for part in parts]


def stage_partitions(samples: list[Sample], num_partitions: int, seed: int, stage: int,
                     repartition: bool, group: str | None = None) -> list[list[Sample]]:
    """Stage `stage`'s partitions: fixed across stages (original MCKD), or reshuffled per stage; with `group`
    (a regex over sample ids), samples of one group never fall into different partitions."""
    seed = seed + (1000 * stage if repartition else 0)
    if group:
        return grouped_partition(samples, num_partitions, seed, group)
    return partition(samples, num_partitions, seed)
