"""torch Datasets over a source's samples: ground-truth, pseudo-labeled, and image-only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from mckd.data.source import IGNORE_INDEX, DatasetError, Sample, SegmentationSource
from mckd.data.transforms import as_tv


class PseudoLabelReader(Protocol):
    def read(self, sample_id: str) -> dict[str, np.ndarray]: ...


class LabeledDataset(Dataset):
    """Images with ground-truth masks. `weight` scales their loss when mixed with pseudo-labels."""

    def __init__(self, source: SegmentationSource, samples: Sequence[Sample], transform: Callable,
                 weight: float = 1.0, soft_topk: int = 0):
        for s in samples:
            if s.mask is None:
                raise DatasetError(f"image {s.image} has no mask, but its split needs ground truth")
        self.source, self.samples, self.transform = source, list(samples), transform
        self.weight, self.soft_topk = weight, soft_topk

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image, mask = as_tv(*self.source.read(sample))
        item = {"id": sample.id, "index": index, "weight": torch.tensor(self.weight), "pseudo": torch.tensor(False)}
        if self.soft_topk:  # ground truth as a one-hot soft label, so it batches with soft pseudo-labels
            ids = torch.full((self.soft_topk, *mask.shape), IGNORE_INDEX, dtype=torch.long)
            ids[0] = mask
            probs = torch.zeros((self.soft_topk, *mask.shape))
            probs[0] = 1.0
            image, mask, ids, probs = self.transform(image, mask, tv_tensors.Mask(ids), tv_tensors.Mask(probs))
            item.update(soft_ids=ids.as_subclass(torch.Tensor), soft_probs=probs.as_subclass(torch.Tensor))
        else:
            image, mask = self.transform(image, mask)
        item.update(image=image.as_subclass(torch.Tensor), mask=mask.as_subclass(torch.Tensor))
        return item


class PseudoLabeledDataset(Dataset):
    """Images with a pseudo-label stage's labels; pixels below `confidence_threshold` are ignored."""

    def __init__(self, source: SegmentationSource, samples: Sequence[Sample], labels: PseudoLabelReader,
                 transform: Callable, confidence_threshold: float = 0.0, soft_topk: int = 0):
        self.source, self.samples, self.labels, self.transform = source, list(samples), labels, transform
        self.threshold, self.soft_topk = confidence_threshold, soft_topk

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = self.source.read_image(sample)
        stored = self.labels.read(sample.id)
        label = stored["label"].astype(np.int64)
        if label.shape != image.shape[:2]:
            raise DatasetError(f"pseudo-label of {sample.id}: size {label.shape} differs from its image {image.shape[:2]}")
        if self.threshold > 0:
            label[stored["confidence"] < round(self.threshold * 255)] = IGNORE_INDEX
        image, mask = as_tv(image, label)
        item = {"id": sample.id, "index": index, "weight": torch.tensor(1.0), "pseudo": torch.tensor(True)}
        if self.soft_topk:
            if "soft_ids" not in stored:
                raise DatasetError(f"pseudo-label of {sample.id} has no soft labels: label with pseudo.soft_topk > 0")
            ids = tv_tensors.Mask(torch.from_numpy(stored["soft_ids"][: self.soft_topk].astype(np.int64)))
            probs = tv_tensors.Mask(torch.from_numpy(stored["soft_probs"][: self.soft_topk].astype(np.float32)))
            image, mask, ids, probs = self.transform(image, mask, ids, probs)
            item.update(soft_ids=ids.as_subclass(torch.Tensor), soft_probs=probs.as_subclass(torch.Tensor))
        else:
            image, mask = self.transform(image, mask)
        item.update(image=image.as_subclass(torch.Tensor), mask=mask.as_subclass(torch.Tensor))
        return item


class ImageDataset(Dataset):
    """Images for inference, with their original size."""

    def __init__(self, source: SegmentationSource, samples: Sequence[Sample], transform: Callable):
        self.source, self.samples, self.transform = source, list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = self.source.read_image(sample)
        tensor = self.transform(as_tv(image)[0]).as_subclass(torch.Tensor)
        return {"id": sample.id, "index": index, "image": tensor, "size": torch.tensor(image.shape[:2]),
                "input_size": torch.tensor(tensor.shape[-2:])}


class EvalDataset(ImageDataset):
    """Images for evaluation (resized by `transform`) with their ground truth at its own size: predictions are
    upsampled to the mask, never the mask downsampled to the prediction (UniMatch's 'original' mode)."""

    def __init__(self, source: SegmentationSource, samples: Sequence[Sample], transform: Callable):
        for s in samples:
            if s.mask is None:
                raise DatasetError(f"image {s.image} has no mask, but its split needs ground truth")
        super().__init__(source, samples, transform)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image, mask = self.source.read(sample)
        tensor = self.transform(as_tv(image)[0]).as_subclass(torch.Tensor)
        return {"id": sample.id, "index": index, "image": tensor, "mask": torch.from_numpy(mask.astype(np.int64)),
                "size": torch.tensor(image.shape[:2]), "input_size": torch.tensor(tensor.shape[-2:])}


PAD_VALUES = {"image": 0.0, "mask": IGNORE_INDEX, "soft_ids": IGNORE_INDEX, "soft_probs": 0.0}


def pad_collate(items: list[dict]) -> dict:
    """Batch items, padding images and label planes of different sizes at the bottom and right."""
    batch: dict = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in PAD_VALUES:
            h = max(v.shape[-2] for v in values)
            w = max(v.shape[-1] for v in values)
            values = [torch.nn.functional.pad(v, (0, w - v.shape[-1], 0, h - v.shape[-2]), value=PAD_VALUES[key])
                      for v in values]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch
