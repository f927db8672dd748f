"""Cityscapes in the official layout: leftImg8bit/{split}/{city}/*, gtFine/{split}/{city}/*."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mckd.data.source import Sample, SegmentationSource, build_lut, require_dir, require_images

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)
# The official labelId -> trainId table; every other id is ignored.
LABEL_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                     25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
IMAGE_SUFFIX = "_leftImg8bit.png"


def label_ids_lut() -> np.ndarray:
    lut = np.full(256, 255, dtype=np.int32)
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


def mask_for_image(root: Path, image: Path) -> Path:
    """The ground truth of a leftImg8bit image (see `prefer_train_ids`)."""
    rel = image.relative_to(root / "leftImg8bit")
    stem = str(rel)[: -len(IMAGE_SUFFIX)]
    return prefer_train_ids(root / "gtFine" / f"{stem}_gtFine_labelTrainIds.png")


def prefer_train_ids(train_ids: Path) -> Path:
    """`_labelTrainIds.png` when present, else the `_labelIds.png` beside it (mapped on read)."""
    if train_ids.is_file() or not train_ids.name.endswith("_labelTrainIds.png"):
        return train_ids
    return train_ids.with_name(train_ids.name.replace("_labelTrainIds.png", "_labelIds.png"))


class CityscapesSource(SegmentationSource):
    name = "cityscapes"
    class_names = CLASS_NAMES
    builtin_palette = PALETTE

    def __init__(self, root: str):
        self.root = require_dir(root, "dataset.params.root")
        self.has_test = False  # the official test masks are withheld

    def mask_lut(self, sample: Sample) -> np.ndarray:
        if sample.mask is not None and sample.mask.endswith("_labelIds.png"):
            return label_ids_lut()
        return build_lut(self.num_classes)

    def sample_id(self, image: Path) -> str:
        return image.name[: -len(IMAGE_SUFFIX)]

    def resolve_mask(self, mask: Path) -> Path:
        return prefer_train_ids(mask)

    def sample_for_image(self, image: Path) -> Sample:
        mask = mask_for_image(self.root, image)
        return Sample(self.sample_id(image), str(image), str(mask) if mask.is_file() else None)

    def samples(self, split: str) -> list[Sample]:
        directory = require_dir(self.root / "leftImg8bit" / split, "dataset.params.root")
        images = require_images(sorted(directory.glob(f"*/*{IMAGE_SUFFIX}")), directory, self.root,
                                f"CITY/*{IMAGE_SUFFIX} files")
        return [self.sample_for_image(p) for p in images]
