"""Labeled / unlabeled / val / test splits, from the field's split lists or from a ratio and a seed."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from mckd.data.source import DatasetError, Sample, SegmentationSource


@dataclass
class Splits:
    labeled: list[Sample]
    unlabeled: list[Sample]
    val: list[Sample]
    test: list[Sample]


def resolve_list_path(path: str) -> Path:
    """A split-list path as given, or relative to the lists shipped in `mckd/splits`."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    shipped = Path(str(resources.files("mckd") / "splits" / path))
    if shipped.is_file():
        return shipped
    raise DatasetError(f"split list not found: {path} (looked in the working directory and mckd/splits)")


def read_split_list(path: str, source: SegmentationSource, with_masks: bool = True) -> list[Sample]:
    """Samples from a file of lines `IMAGE MASK` (or `IMAGE`), paths relative to the dataset root."""
    list_path = resolve_list_path(path)
    samples = []
    for lineno, line in enumerate(list_path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2:
            raise DatasetError(f"{list_path}:{lineno}: expected 'IMAGE [MASK]', got {line!r}")
        mask = parts[1] if with_masks and len(parts) == 2 else None
        samples.append(source.sample_from_list(parts[0], mask))
    if not samples:
        raise DatasetError(f"split list {list_path} is empty")
    return samples


def shuffled(samples: list[Sample], seed: int) -> list[Sample]:
    """`samples` in a seeded order that depends only on their ids."""
    ordered = sorted(samples, key=lambda s: s.id)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in order]


def split_by_count(pool: list[Sample], num_labeled: int | None, labeled_ratio: float | None,
                   seed: int) -> tuple[list[Sample], list[Sample]]:
    """Disjoint labeled and unlabeled parts of `pool`, deterministic in `seed`. The labeled images are drawn
    from those with a mask; images without one are always unlabeled."""
    if num_labeled is None:
        if labeled_ratio is None:
            raise DatasetError("dataset.split: set labeled_list, num_labeled or labeled_ratio")
        if not 0 < labeled_ratio <= 1:
            raise DatasetError(f"dataset.split.labeled_ratio={labeled_ratio}: expected a fraction in (0, 1]")
        num_labeled = max(1, round(labeled_ratio * len(pool)))
    masked = [s for s in pool if s.mask is not None]
    if pool and not masked:
        raise DatasetError(f"none of the {len(pool)} train images has a mask (e.g. {pool[0].image}), so none can "
                           "be labeled: check the mask directory and suffix in dataset.params")
    if not 0 < num_labeled <= len(masked):
        raise DatasetError(f"dataset.split.num_labeled={num_labeled}: expected 1..{len(masked)} (train images "
                           "with a mask)")
    labeled = shuffled(masked, seed)[:num_labeled]
    taken = {s.id for s in labeled}
    return sorted(labeled, key=lambda s: s.id), sorted((s for s in pool if s.id not in taken), key=lambda s: s.id)


def build_splits(source: SegmentationSource, split_cfg: dict) -> Splits:
    """The four splits of a dataset, as its `dataset.split` config asks."""
    cfg = dict(split_cfg)
    if cfg.get("labeled_list"):
        labeled = read_split_list(cfg["labeled_list"], source)
        if cfg.get("unlabeled_list"):
            with_masks = cfg.get("unlabeled_masks") is not False  # null: true
            unlabeled = read_split_list(cfg["unlabeled_list"], source, with_masks=with_masks)
        else:
            taken = {s.id for s in labeled}
            unlabeled = [s for s in source.samples("train") if s.id not in taken]
    else:
        labeled, unlabeled = split_by_count(source.samples("train"), cfg.get("num_labeled"),
                                            cfg.get("labeled_ratio"), cfg.get("seed") or 0)
    val = read_split_list(cfg["val_list"], source) if cfg.get("val_list") else source.samples("val")
    test = source.samples("test") if source.has_test else []
    check_disjoint(labeled, unlabeled)
    limits = [cfg.get(f"max_{name}") for name in ("labeled", "unlabeled", "val", "test")]
    return Splits(*(part[:n] if n else part for part, n in zip((labeled, unlabeled, val, test), limits)))


def check_disjoint(labeled: list[Sample], unlabeled: list[Sample]) -> None:
    overlap = {s.id for s in labeled} & {s.id for s in unlabeled}
    if overlap:
        raise DatasetError(f"labeled and unlabeled splits share {len(overlap)} samples, e.g. {sorted(overlap)[:3]}")
