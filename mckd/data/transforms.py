"""Joint image + mask augmentation with torchvision.transforms.v2 (masks are tv_tensors.Mask)."""

from __future__ import annotations

import numpy as np
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


class CutOut(v2.RandomErasing):
    """RandomErasing of the image with noise, and of every label plane with the ignore index (ST++'s cutout)."""

    def transform(self, inpt, params: dict):
        if isinstance(inpt, tv_tensors.Mask) and params["v"] is not None:
            out = inpt.clone()
            out[..., params["i"]: params["i"] + params["h"], params["j"]: params["j"] + params["w"]] = IGNORE_INDEX
            return out
        return super().transform(inpt, params)


def photometric_noise(color_jitter: float = 0.0, color_jitter_prob: float = 0.8, grayscale_prob: float = 0.0,
                      blur_prob: float = 0.0, blur_sigma: tuple[float, float] = (0.1, 2.0)) -> list[v2.Transform]:
    """Strong noise on uint8 images (ST++ / UniMatch): colour jitter (s, s, s, s/2), grayscale, Gaussian blur."""
    steps: list[v2.Transform] = []
    if color_jitter > 0:
        jitter = v2.ColorJitter(color_jitter, color_jitter, color_jitter, min(0.5, color_jitter / 2))
        steps.append(v2.RandomApply([jitter], p=color_jitter_prob))
    if grayscale_prob > 0:
        steps.append(v2.RandomGrayscale(grayscale_prob))
    if blur_prob > 0:
        kernel = 2 * int(3 * max(blur_sigma) + 0.5) + 1  # +-3 sigma
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, tuple(blur_sigma))], p=blur_prob))
    return steps


def train_transform(crop_size: tuple[int, int], base_size: tuple[int, int] | None,
                    scale_range: tuple[float, float] = (0.5, 2.0), hflip: bool = True,
                    color_jitter: float = 0.0, color_jitter_prob: float = 1.0, grayscale_prob: float = 0.0,
                    blur_prob: float = 0.0, blur_sigma: tuple[float, float] = (0.1, 2.0),
                    cutout_prob: float = 0.0) -> v2.Compose:
    """Random scale (around `base_size`, (h, w)), crop padded with ignore, flip, photometric noise, normalise,
    CutOut (its pixels ignored in the labels)."""
    steps: list[v2.Transform] = []
    if base_size is not None:  # ScaleJitter takes (width, height)
        steps.append(v2.ScaleJitter(tuple(base_size)[::-1], scale_range=tuple(scale_range)))
    steps.append(v2.RandomCrop(tuple(crop_size), pad_if_needed=True, fill=PAD_FILL))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += photometric_noise(color_jitter, color_jitter_prob, grayscale_prob, blur_prob, blur_sigma)
    steps += _to_float_and_normalize()
    if cutout_prob > 0:  # after normalising: the erased box gets unit-normal noise, like the pixels around it
        steps.append(CutOut(p=cutout_prob, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3), value="random"))
    return v2.Compose(steps)


def eval_transform(size: tuple[int, int] | None = None) -> v2.Compose:
    """Resize to `size` (masks by nearest neighbour), or keep the full image when None."""
    steps: list[v2.Transform] = [] if size is None else [v2.Resize(tuple(size))]
    return v2.Compose(steps + _to_float_and_normalize())


def as_tv(image, mask=None):
    """numpy HxWx3 image and HxW mask as tv_tensors (CxHxW Image, HxW Mask)."""
    # copies: arrays decoded by PIL are read-only, which torch.from_numpy warns about
    img = tv_tensors.Image(torch.from_numpy(image.transpose(2, 0, 1).copy()))
    if mask is None:
        return img, None
    return img, tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64)))
