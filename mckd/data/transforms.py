"""Joint image + mask augmentation with torchvision.transforms.v2 (masks are tv_tensors.Mask)."""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from mckd.data.source import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# padding: 0 for images, ignore for hard labels; soft-label planes travel as masks and are ignored there too
PAD_FILL = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}


def _to_float_and_normalize() -> list[v2.Transform]:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(crop_size: tuple[int, int], base_size: tuple[int, int] | None,
                    scale_range: tuple[float, float] = (0.5, 2.0), hflip: bool = True,
                    color_jitter: float = 0.0) -> v2.Compose:
    """Random scale (around `base_size`, (h, w)), crop padded with ignore, flip, photometric jitter, normalise."""
    steps: list[v2.Transform] = []
    if base_size is not None:  # ScaleJitter takes (width, height)
        steps.append(v2.ScaleJitter(tuple(base_size)[::-1], scale_range=tuple(scale_range)))
    steps.append(v2.RandomCrop(tuple(crop_size), pad_if_needed=True, fill=PAD_FILL))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if color_jitter > 0:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter, min(0.5, color_jitter / 4)))
    return v2.Compose(steps + _to_float_and_normalize())


def eval_transform(size: tuple[int, int] | None = None) -> v2.Compose:
    """Resize to `size` (masks by nearest neighbour), or keep the full image when None."""
    steps: list[v2.Transform] = [] if size is None else [v2.Resize(tuple(size))]
    return v2.Compose(steps + _to_float_and_normalize())


def as_tv(image, mask=None):
    """numpy HxWx3 image and HxW mask as tv_tensors (CxHxW Image, HxW Mask)."""
    img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
    if mask is None:
        return img, None
    return img, tv_tensors.Mask(torch.from_numpy(mask).long())
