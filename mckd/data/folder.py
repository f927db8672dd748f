"""Any images directory plus masks directory (e.g. CamVid in the SegNet layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mckd.data.source import DatasetError, Sample, SegmentationSource, build_lut, require_dir, require_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_images(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def pair_with_masks(images: list[Path], mask_dir: Path | None, mask_suffix: str) -> list[Sample]:
    """Samples for `images`, each with the mask of the same stem in `mask_dir` where there is one: an image
    without a mask can only be unlabeled (the splits that need ground truth check for it)."""
    samples = []
    for image in images:
        mask = None if mask_dir is None else mask_dir / f"{image.stem}{mask_suffix}"
        has_mask = mask is not None and mask.is_file()
        samples.append(Sample(id=image.stem, image=str(image), mask=str(mask) if has_mask else None))
    return samples


class FolderSource(SegmentationSource):
    """`root/{split_dir}` images with `root/{split_mask_dir}` masks of the same stem."""

    def __init__(self, root: str, class_names: list[str], splits: dict[str, list[str | None]],
                 ignore_values: list[int] = (), remap: dict[int, int] | None = None,
                 mask_suffix: str = ".png", name: str = "folder", palette: list[list[int]] | None = None):
        self.root = require_dir(root, "dataset.params.root")
        self.name = name
        self.class_names = tuple(class_names)
        self.split_dirs = {k: tuple(v) for k, v in splits.items()}
        self.mask_suffix = mask_suffix
        self._lut = build_lut(len(class_names), tuple(ignore_values), dict(remap or {}))
        self._palette = None if palette is None else np.asarray(palette, dtype=np.uint8)
        test_dir = self.root / self.split_dirs.get("test", ("__none__",))[0]
        self.has_test = test_dir.is_dir() and bool(list_images(test_dir))

    @property
    def palette(self) -> np.ndarray:
        return super().palette if self._palette is None else self._palette

    def mask_lut(self, sample: Sample) -> np.ndarray:
        return self._lut

    def samples(self, split: str) -> list[Sample]:
        if split not in self.split_dirs:
            raise DatasetError(f"dataset.params.splits has no '{split}' entry: expected [image_dir, mask_dir]")
        image_dir, mask_dir = self.split_dirs[split]
        images = require_dir(self.root / image_dir, f"dataset.params.splits.{split}[0]")
        found = require_images(list_images(images), images, self.root,
                               f"{'/'.join(IMAGE_SUFFIXES)} files: the {split} split's images, dataset.params.splits.{split}[0]")
        masks = None if mask_dir is None else require_dir(self.root / mask_dir, f"dataset.params.splits.{split}[1]")
        return pair_with_masks(found, masks, self.mask_suffix)
