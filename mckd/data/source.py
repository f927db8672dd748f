"""The reader interface: a source lists samples per split and reads their images and masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mckd.errors import MckdError

IGNORE_INDEX = 255


@dataclass(frozen=True)
class Sample:
    """One image; `mask` is None where the split has no ground truth."""

    id: str
    image: str
    mask: str | None = None


class DatasetError(MckdError, ValueError):
    """Bad dataset input: the message names the file or key and what was expected."""


def default_palette(num_classes: int) -> np.ndarray:
    """The Pascal VOC colour map, extended to any number of classes."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for i in range(num_classes):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as an HxWx3 uint8 array."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except OSError as err:
        raise DatasetError(f"cannot read image {path}: {err}") from None


def build_lut(num_classes: int, ignore_values: tuple[int, ...] = (), remap: dict[int, int] | None = None,
              size: int = 256) -> np.ndarray:
    """A lookup table raw mask value -> class id (255 = ignore, -1 = invalid)."""
    lut = np.full(size, -1, dtype=np.int32)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    for v in ignore_values:
        lut[int(v)] = IGNORE_INDEX
    for src, dst in (remap or {}).items():
        lut[int(src)] = int(dst)
    return lut


def read_mask(path: str | Path, lut: np.ndarray, num_classes: int) -> np.ndarray:
    """A mask file mapped through `lut` to class ids as HxW uint8; invalid values raise DatasetError."""
    try:
        with Image.open(path) as img:
            raw = np.asarray(img)
    except FileNotFoundError:
        raise DatasetError(f"mask file not found: {path}") from None
    except OSError as err:
        raise DatasetError(f"cannot read mask {path}: {err}") from None
    if raw.ndim != 2:
        raise DatasetError(f"mask {path}: expected a single-channel image, got shape {raw.shape}")
    if raw.max(initial=0) >= len(lut):
        raise DatasetError(f"mask {path}: value {raw.max()} exceeds the label table size {len(lut)}")
    mask = lut[raw]
    if (mask < 0).any():
        bad = sorted(np.unique(raw[mask < 0]).tolist())[:10]
        raise DatasetError(
            f"mask {path}: values {bad} are neither classes 0..{num_classes - 1} nor ignore values"
        )
    return mask.astype(np.uint8)


class SegmentationSource:
    """Base reader. Subclasses set `name`, `class_names`, list samples and define the mask table."""

    name: str = "base"
    class_names: tuple[str, ...] = ()
    has_test: bool = False
    reads_files: bool = True  # False for a source that renders its samples (no image files to check)
    builtin_palette: np.ndarray | None = None  # a dataset's official colours, known without its files

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def palette(self) -> np.ndarray:
        return default_palette(self.num_classes) if self.builtin_palette is None else self.builtin_palette

    def samples(self, split: str) -> list[Sample]:
        """All samples of a split ("train", "val" or "test")."""
        raise NotImplementedError

    def mask_lut(self, sample: Sample) -> np.ndarray:
        return build_lut(self.num_classes)

    def sample_id(self, image: Path) -> str:
        return image.stem

    def sample_from_list(self, image: str, mask: str | None) -> Sample:
        """A sample from one split-list line, paths relative to `self.root`."""
        image_path = Path(self.root) / image
        if not image_path.is_file():
            raise DatasetError(f"image listed in a split file not found: {image_path}")
        mask_path = None if mask is None else self.resolve_mask(Path(self.root) / mask)
        if mask_path is not None and not mask_path.is_file():
            raise DatasetError(f"image {image_path} has no mask: expected {mask_path}")
        return Sample(self.sample_id(image_path), str(image_path), None if mask_path is None else str(mask_path))

    def resolve_mask(self, mask: Path) -> Path:
        return mask

    def read_image(self, sample: Sample) -> np.ndarray:
        return read_rgb(sample.image)

    def read_mask(self, sample: Sample) -> np.ndarray | None:
        if sample.mask is None:
            return None
        return read_mask(sample.mask, self.mask_lut(sample), self.num_classes)

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        """Image and mask, checked to have the same size."""
        image = self.read_image(sample)
        mask = self.read_mask(sample)
        if mask is not None and mask.shape != image.shape[:2]:
            raise DatasetError(
                f"mask {sample.mask}: size {mask.shape} differs from its image {sample.image} {image.shape[:2]}"
            )
        return image, mask


def require_images(found: list, directory: Path, root: Path, what: str) -> list:
    """`found` (a split's images), or a DatasetError saying the directory has none."""
    if not found:
        raise DatasetError(f"dataset.params.root={root}: no images in {directory} (expected {what})")
    return found


def require_dir(path: str | Path, key: str) -> Path:
    """`path` as a Path, or a DatasetError naming the config key when the directory is missing."""
    if path is None:
        raise DatasetError(f"{key} is not set: expected the dataset's root directory")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DatasetError(f"{key}={path}: directory not found")
    return p
