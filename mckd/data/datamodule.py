"""The LightningDataModule: a dataset's splits, and the training set of the step that runs now."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from mckd.data.datasets import (
    ImageDataset,
    LabeledDataset,
    PseudoLabeledDataset,
    PseudoLabelReader,
    RepeatedDataset,
    pad_collate,
)
from mckd.data.registry import build_source
from mckd.data.source import Sample
from mckd.data.splits import build_splits
from mckd.data.transforms import eval_transform, train_transform


def _size(value) -> tuple[int, int] | None:
    return None if value is None else tuple(int(v) for v in value)


class SegmentationDataModule(L.LightningDataModule):
    """Labeled, unlabeled, val and test splits of one dataset.

    The train set is chosen per step: `use_labeled()` for the teacher, `use_pseudo_labels()` for a student.
    """

    def __init__(self, cfg: Mapping):
        super().__init__()
        self.cfg = cfg
        self.source = build_source(cfg)
        self.splits = build_splits(self.source, cfg.get("split", {}))
        self.train_set: Dataset | None = None
        self.predict_set: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def augmentation(self, strong: Mapping | None = None):
        """The training transform; `strong` (student noise) overrides scale range and colour jitter."""
        cfg, strong = self.cfg, dict(strong or {})
        return train_transform(
            crop_size=_size(cfg.crop_size), base_size=_size(cfg.get("base_size")),
            scale_range=tuple(strong.get("scale_range") or cfg.scale_range), hflip=cfg.get("hflip", True),
            color_jitter=float(strong.get("color_jitter", cfg.get("color_jitter", 0.0))),
        )

    def eval_augmentation(self):
        return eval_transform(_size(self.cfg.get("eval_size")))

    def use_labeled(self, soft_topk: int = 0) -> None:
        self.train_set = LabeledDataset(self.source, self.splits.labeled, self.augmentation(), soft_topk=soft_topk)

    def use_pseudo_labels(self, samples: Sequence[Sample], labels: PseudoLabelReader, labeled_weight: float = 0.0,
                          confidence_threshold: float = 0.0, soft_topk: int = 0,
                          strong: Mapping | None = None) -> None:
        """Train on `samples` with `labels`, plus the labeled split weighted by `labeled_weight` when > 0."""
        aug = self.augmentation(strong)
        parts: list[Dataset] = [PseudoLabeledDataset(self.source, samples, labels, aug, confidence_threshold, soft_topk)]
        if labeled_weight > 0:
            parts.append(LabeledDataset(self.source, self.splits.labeled, aug, labeled_weight, soft_topk))
        self.train_set = ConcatDataset(parts)

    def use_predict(self, samples: Sequence[Sample]) -> None:
        self.predict_set = ImageDataset(self.source, samples, self.eval_augmentation())

    def _loader(self, dataset: Dataset, train: bool = False) -> DataLoader:
        batch_size = self.cfg.batch_size if train else self.cfg.get("eval_batch_size", self.cfg.batch_size)
        workers = self.cfg.get("num_workers", 0)
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train and len(dataset) > batch_size,
                          num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                          collate_fn=pad_collate)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("no training set chosen: call use_labeled() or use_pseudo_labels() first")
        # small (labeled) sets are repeated so that an epoch means enough optimizer steps
        return self._loader(RepeatedDataset(self.train_set, self.cfg.get("min_epoch_size") or 0), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(LabeledDataset(self.source, self.splits.val, self.eval_augmentation()))

    def test_dataloader(self) -> DataLoader:
        return self._loader(LabeledDataset(self.source, self.splits.test, self.eval_augmentation()))

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set)
