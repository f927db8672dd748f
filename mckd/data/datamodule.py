"""LightningDataModules, one per kind of step, over a dataset's reader and splits (`SegmentationData`, built once).

    SegmentationDataModule   val and test: evaluation (mckd-eval, a loaded teacher)
    LabeledDataModule        + the labeled split: the teacher's training
    PseudoLabelDataModule    + a partition's pseudo-labels (and the labeled split): a student's training
    PredictDataModule        + the images to label: the labeler

Each saves its dataset config, the dataset's palette and its own settings with `save_hyperparameters`, so every
checkpoint a step writes carries them (`datamodule_hyper_parameters`): mckd-eval and mckd-predict read a
checkpoint alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torchvision.transforms import v2

from mckd.data.datasets import (
    EvalDataset,
    ImageDataset,
    LabeledDataset,
    PseudoLabeledDataset,
    PseudoLabelReader,
    pad_collate,
)
from mckd.data.registry import build_source
from mckd.data.sampling import EpochSampler, SeededDataset
from mckd.data.source import Sample, SegmentationSource
from mckd.data.splits import Splits, build_splits
from mckd.data.transforms import eval_transform, train_transform
from mckd.schema import plain


def _size(value: Sequence[int] | None) -> tuple[int, int] | None:
    return None if value is None else tuple(int(v) for v in value)


@dataclass(frozen=True)
class SegmentationData:
    """A dataset config with its reader and splits: the expensive parts, built once and shared by every step's
    DataModule, the pictures and W&B's validation images."""

    cfg: Any  # the `dataset` config node (DictConfig), or a plain mapping
    source: SegmentationSource
    splits: Splits

    @classmethod
    def build(cls, cfg: Any) -> SegmentationData:
        source = build_source(cfg)
        return cls(cfg, source, build_splits(source, cfg.get("split") or {}))

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    @property
    def eval_batch_size(self) -> int:
        return self.cfg.get("eval_batch_size") or self.cfg["batch_size"]

    def train_transform(self, strong: Mapping | None = None) -> v2.Compose:
        """The training transform: the dataset's own, or with `strong` (student noise on pseudo-labeled images)
        overriding its scale range and adding photometric noise and CutOut."""
        cfg, strong = self.cfg, dict(strong or {})
        noise = {k: strong[k] for k in ("color_jitter_prob", "grayscale_prob", "blur_prob", "cutout_prob")
                 if strong.get(k) is not None}
        if strong.get("blur_sigma") is not None:
            noise["blur_sigma"] = tuple(strong["blur_sigma"])
        return train_transform(
            crop_size=_size(cfg["crop_size"]), base_size=_size(cfg.get("base_size")),
            scale_range=tuple(strong.get("scale_range") or cfg["scale_range"]), hflip=cfg.get("hflip", True),
            color_jitter=float(strong.get("color_jitter", cfg.get("color_jitter", 0.0))), **noise,
        )

    def eval_transform(self) -> v2.Compose:
        return eval_transform(_size(self.cfg.get("eval_size")))


class SegmentationDataModule(L.LightningDataModule):
    """The val and test splits of a dataset, read as training validates (in order, every image once)."""

    def __init__(self, data: SegmentationData, **settings: Any):
        super().__init__()
        self.data = data
        # not logged: the loggers get the composed config, and the module's hyperparameters as before
        palette = np.asarray(data.source.palette).tolist()
        self.save_hyperparameters({"dataset": dict(plain(data.cfg)), "palette": palette, **settings}, logger=False)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def _workers(self) -> dict:
        workers = self.data.cfg.get("num_workers", 0)
        return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": torch.cuda.is_available(),
                "collate_fn": pad_collate}

    def _loader(self, dataset: Dataset) -> DataLoader:
        """An evaluation loader: in order, every item once."""
        return DataLoader(dataset, batch_size=self.data.eval_batch_size, **self._workers())

    def val_dataloader(self) -> DataLoader:
        return self._loader(EvalDataset(self.data.source, self.data.splits.val, self.data.eval_transform()))

    def test_dataloader(self) -> DataLoader:
        return self._loader(EvalDataset(self.data.source, self.data.splits.test, self.data.eval_transform()))


class TrainingDataModule(SegmentationDataModule):
    """A step's training set, its epochs drawn by an `EpochSampler` seeded with the step's seed."""

    train_set: ConcatDataset
    group_fractions: list[float] | None = None  # per-batch shares of the train set's parts; None: pooled

    def __init__(self, data: SegmentationData, seed: int = 0, **settings: Any):
        super().__init__(data, seed=seed, **settings)
        self.seed = seed

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def train_sampler(self) -> EpochSampler:
        """Epochs of at least `min_epoch_size` items (small sets are drawn several times), in whole batches."""
        cfg = self.data.cfg
        size = max(len(self.train_set), cfg.get("min_epoch_size") or 0)
        batch_size = cfg["batch_size"]
        return EpochSampler([len(d) for d in self.train_set.datasets], max(1, size // batch_size), batch_size,
                            self.seed, self._epoch, self.group_fractions)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(SeededDataset(self.train_set), batch_size=self.data.cfg["batch_size"],
                          sampler=self.train_sampler(), **self._workers())


class LabeledDataModule(TrainingDataModule):
    """The teacher's: the labeled split with the dataset's augmentation."""

    def __init__(self, data: SegmentationData, seed: int = 0):
        super().__init__(data, seed, train_set="labeled")
        self.train_set = ConcatDataset([LabeledDataset(data.source, data.splits.labeled, data.train_transform())])


class PseudoLabelDataModule(TrainingDataModule):
    """A student's: `samples` with `labels` and the `strong` noise, plus the labeled split (with the dataset's own
    augmentation) weighted by `labeled_weight` when > 0, making up `labeled_fraction` of every batch (None: its
    share of the items)."""

    def __init__(self, data: SegmentationData, samples: Sequence[Sample], labels: PseudoLabelReader,
                 labeled_weight: float = 0.0, confidence_threshold: float = 0.0, soft_topk: int = 0,
                 strong: Mapping | None = None, labeled_fraction: float | None = None, seed: int = 0):
        super().__init__(data, seed, train_set="pseudo_labels", num_pseudo_labeled=len(samples),
                         labeled_weight=labeled_weight, confidence_threshold=confidence_threshold,
                         soft_topk=soft_topk, strong=dict(plain(strong) or {}), labeled_fraction=labeled_fraction)
        parts: list[Dataset] = [PseudoLabeledDataset(data.source, samples, labels, data.train_transform(strong),
                                                     confidence_threshold, soft_topk)]
        if labeled_weight > 0:
            parts.append(LabeledDataset(data.source, data.splits.labeled, data.train_transform(), labeled_weight,
                                        soft_topk))
            if labeled_fraction is not None:
                self.group_fractions = [1 - labeled_fraction, labeled_fraction]
        self.train_set = ConcatDataset(parts)


class PredictDataModule(SegmentationDataModule):
    """The labeler's: `samples`, in order, read as evaluation reads them."""

    def __init__(self, data: SegmentationData, samples: Sequence[Sample]):
        super().__init__(data)
        self.predict_set = ImageDataset(data.source, samples, data.eval_transform())

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set)
