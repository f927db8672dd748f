"""The LightningDataModule: a dataset's splits, and the training set of the step that runs now."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

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
from mckd.data.source import Sample
from mckd.data.splits import build_splits
from mckd.data.transforms import eval_transform, train_transform


def _size(value) -> tuple[int, int] | None:
    return None if value is None else tuple(int(v) for v in value)


class SegmentationDataModule(L.LightningDataModule):
    """Labeled, unlabeled, val and test splits of one dataset.

    The train set is chosen per step: `use_labeled()` for the teacher, `use_pseudo_labels()` for a student;
    its epochs are drawn by an `EpochSampler` seeded with the step's seed.
    """

    def __init__(self, cfg: Mapping):
        super().__init__()
        self.cfg = cfg
        self.source = build_source(cfg)
        self.splits = build_splits(self.source, cfg.get("split", {}))
        self.train_set: ConcatDataset | None = None
        self.train_seed = 0
        self.group_fractions: list[float] | None = None  # per-batch shares of the train set's parts
        self.predict_set: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def augmentation(self, strong: Mapping | None = None):
        """The training transform: the dataset's own, or with `strong` (student noise on pseudo-labeled images)
        overriding its scale range and adding photometric noise and CutOut."""
        cfg, strong = self.cfg, dict(strong or {})
        noise = {k: strong[k] for k in ("color_jitter_prob", "grayscale_prob", "blur_prob", "cutout_prob")
                 if strong.get(k) is not None}
        if strong.get("blur_sigma") is not None:
            noise["blur_sigma"] = tuple(strong["blur_sigma"])
        return train_transform(
            crop_size=_size(cfg.crop_size), base_size=_size(cfg.get("base_size")),
            scale_range=tuple(strong.get("scale_range") or cfg.scale_range), hflip=cfg.get("hflip", True),
            color_jitter=float(strong.get("color_jitter") or cfg.get("color_jitter", 0.0)), **noise,
        )

    def eval_augmentation(self):
        return eval_transform(_size(self.cfg.get("eval_size")))

    def use_labeled(self, soft_topk: int = 0, seed: int = 0) -> None:
        self.train_set = ConcatDataset([LabeledDataset(self.source, self.splits.labeled, self.augmentation(),
                                                       soft_topk=soft_topk)])
        self.train_seed, self.group_fractions = seed, None

    def use_pseudo_labels(self, samples: Sequence[Sample], labels: PseudoLabelReader, labeled_weight: float = 0.0,
                          confidence_threshold: float = 0.0, soft_topk: int = 0, strong: Mapping | None = None,
                          labeled_fraction: float | None = None, seed: int = 0) -> None:
        """Train on `samples` with `labels` and the `strong` noise, plus the labeled split (with the dataset's own
        augmentation) weighted by `labeled_weight` when > 0, making up `labeled_fraction` of every batch
        (None: its share of the items)."""
        parts: list[Dataset] = [PseudoLabeledDataset(self.source, samples, labels, self.augmentation(strong),
                                                     confidence_threshold, soft_topk)]
        self.group_fractions = None
        if labeled_weight > 0:
            parts.append(LabeledDataset(self.source, self.splits.labeled, self.augmentation(), labeled_weight,
                                        soft_topk))
            if labeled_fraction is not None:
                self.group_fractions = [1 - labeled_fraction, labeled_fraction]
        self.train_set = ConcatDataset(parts)
        self.train_seed = seed

    def use_predict(self, samples: Sequence[Sample]) -> None:
        self.predict_set = ImageDataset(self.source, samples, self.eval_augmentation())

    @property
    def eval_batch_size(self) -> int:
        return self.cfg.get("eval_batch_size") or self.cfg.batch_size

    def _loader(self, dataset: Dataset) -> DataLoader:
        """An evaluation loader: in order, every item once."""
        workers = self.cfg.get("num_workers", 0)
        return DataLoader(dataset, batch_size=self.eval_batch_size,
                          num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                          collate_fn=pad_collate)

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def train_sampler(self) -> EpochSampler:
        """Epochs of at least `min_epoch_size` items (small sets are drawn several times), in whole batches."""
        if self.train_set is None:
            raise RuntimeError("no training set chosen: call use_labeled() or use_pseudo_labels() first")
        size = max(len(self.train_set), self.cfg.get("min_epoch_size") or 0)
        batch_size = self.cfg.batch_size
        return EpochSampler([len(d) for d in self.train_set.datasets], max(1, size // batch_size), batch_size,
                            self.train_seed, self._epoch, self.group_fractions)

    def train_dataloader(self) -> DataLoader:
        workers = self.cfg.get("num_workers", 0)
        return DataLoader(SeededDataset(self.train_set), batch_size=self.cfg.batch_size, sampler=self.train_sampler(),
                          num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                          collate_fn=pad_collate)

    def val_dataloader(self) -> DataLoader:
        return self._loader(EvalDataset(self.source, self.splits.val, self.eval_augmentation()))

    def test_dataloader(self) -> DataLoader:
        return self._loader(EvalDataset(self.source, self.splits.test, self.eval_augmentation()))

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set)
