"""Joint augmentation: every geometric step must reach the image and its label planes alike."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from fixtures import interior
from torchvision import tv_tensors

from mckd.data.source import IGNORE_INDEX
from mckd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, as_tv, eval_transform, train_transform

# 8 classes coloured as the corners of the RGB cube: far apart, so a pixel's colour names its class
PALETTE = np.array([[(c >> 2 & 1) * 255, (c >> 1 & 1) * 255, (c & 1) * 255] for c in range(8)], dtype=np.uint8)
SIZE = (96, 128)
BLOCK = 16


def block_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A mask of random 16x16 class blocks (one ignored) and the image that paints each class its colour."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, len(PALETTE), size=(SIZE[0] // BLOCK, SIZE[1] // BLOCK))
    mask = np.kron(blocks, np.ones((BLOCK, BLOCK), dtype=blocks.dtype)).astype(np.uint8)
    image = PALETTE[mask]
    mask[BLOCK:2 * BLOCK, BLOCK:2 * BLOCK] = IGNORE_INDEX
    return image, mask


def denormalize(image: torch.Tensor) -> np.ndarray:
    """A normalised CxHxW float image back to HxWx3 in 0..255."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((image * std + mean) * 255).permute(1, 2, 0).numpy()


def colour_classes(image: np.ndarray) -> np.ndarray:
    """The class whose palette colour is nearest to each pixel."""
    distance = ((image[:, :, None, :] - PALETTE[None, None].astype(np.float32)) ** 2).sum(-1)
    return distance.argmin(-1)


def checked_agreement(image: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Fraction of labelled pixels away from class edges whose colour names their mask class, and their count.

    Edges are left out: bilinear resizing blends colours there while the mask is resized by nearest neighbour.
    """
    labels = mask.numpy()
    checked = (labels != IGNORE_INDEX) & interior(labels, radius=2)
    agree = colour_classes(denormalize(image))[checked] == labels[checked]
    return (float(agree.mean()) if checked.any() else 1.0), int(checked.sum())


def test_random_scale_crop_and_flip_keep_image_and_mask_aligned():
    torch.manual_seed(0)
    image, mask = block_scene()
    transform = train_transform(crop_size=(64, 64), base_size=SIZE, scale_range=(0.5, 2.0), hflip=True)
    total = 0
    for _ in range(40):
        out_image, out_mask = transform(*as_tv(image, mask))
        assert out_image.shape == (3, 64, 64) and out_mask.shape == (64, 64)
        assert set(out_mask.unique().tolist()) <= set(np.unique(mask).tolist())
        agreement, checked = checked_agreement(out_image, out_mask)
        assert agreement == 1.0
        total += checked
    assert total > 40 * 64 * 64 * 0.2


@pytest.mark.parametrize("sabotage", ["flip", "shift"])
def test_the_alignment_check_catches_a_step_that_reaches_only_the_image(sabotage):
    image, mask = block_scene()
    out_image, out_mask = eval_transform()(*as_tv(image, mask))
    assert checked_agreement(out_image, out_mask)[0] == 1.0
    moved = out_image.flip(-1) if sabotage == "flip" else out_image.roll(BLOCK // 2 + 3, dims=-1)
    assert checked_agreement(moved, out_mask)[0] < 0.9


def test_soft_label_planes_move_with_the_mask():
    torch.manual_seed(1)
    image, mask = block_scene(seed=1)
    tv_image, tv_mask = as_tv(image, mask)
    ids = torch.full((2, *SIZE), IGNORE_INDEX, dtype=torch.long)
    ids[0] = tv_mask
    probs = torch.zeros((2, *SIZE))
    probs[0] = 1.0
    transform = train_transform(crop_size=(112, 112), base_size=SIZE, scale_range=(0.5, 1.5), hflip=True)
    for _ in range(10):
        _, out_mask, out_ids, out_probs = transform(tv_image, tv_mask, tv_tensors.Mask(ids), tv_tensors.Mask(probs))
        assert torch.equal(out_ids[0], out_mask)
        assert (out_probs[0][out_mask != IGNORE_INDEX] == 1.0).all()


def test_padding_fills_the_image_with_zero_and_the_mask_with_ignore():
    image, mask = block_scene()
    transform = train_transform(crop_size=(128, 160), base_size=None, hflip=False)
    out_image, out_mask = transform(*as_tv(image, mask))
    assert out_mask.shape == (128, 160)
    padded = out_mask == IGNORE_INDEX
    assert int(padded.sum()) >= 128 * 160 - SIZE[0] * SIZE[1]
    assert checked_agreement(out_image, out_mask)[0] == 1.0
    pixels = denormalize(out_image)
    outside = padded.numpy() & (pixels.sum(-1) < 1.0)
    assert outside.sum() == 128 * 160 - SIZE[0] * SIZE[1]


def test_colour_jitter_leaves_the_mask_untouched():
    torch.manual_seed(2)
    image, mask = block_scene()
    transform = train_transform(crop_size=SIZE, base_size=None, hflip=False, color_jitter=0.4)
    out_image, out_mask = transform(*as_tv(image, mask))
    assert torch.equal(out_mask, torch.from_numpy(mask).long())
    assert not np.allclose(denormalize(out_image), image, atol=1.0)


def test_eval_transform_resizes_masks_by_nearest_and_keeps_full_size_exactly():
    image, mask = block_scene()
    full_image, full_mask = eval_transform()(*as_tv(image, mask))
    assert torch.equal(full_mask, torch.from_numpy(mask).long())
    np.testing.assert_allclose(denormalize(full_image), image, atol=1e-3)
    small_image, small_mask = eval_transform((48, 64))(*as_tv(image, mask))
    assert small_image.shape == (3, 48, 64) and small_mask.dtype == torch.long
    assert set(small_mask.unique().tolist()) <= set(np.unique(mask).tolist())
    assert checked_agreement(small_image, small_mask) [0] == 1.0


@pytest.mark.parametrize("scale, step", [(1.0, 1), (0.5, 2)])
def test_scale_range_is_relative_to_base_size_given_as_height_width(scale, step):
    image, mask = block_scene()
    crop = (SIZE[0] // step, SIZE[1] // step)
    transform = train_transform(crop_size=crop, base_size=SIZE, scale_range=(scale, scale), hflip=False)
    _, out_mask = transform(*as_tv(image, mask))
    assert torch.equal(out_mask, torch.from_numpy(mask[::step, ::step]).long())


def test_read_only_arrays_as_pil_decodes_them_become_tensors_without_a_warning():
    image, mask = block_scene()
    image.flags.writeable = False
    mask.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img, target = as_tv(image, mask)
    assert torch.equal(img.permute(1, 2, 0), torch.from_numpy(np.array(image)))
    assert target.dtype == torch.long and torch.equal(target, torch.from_numpy(np.array(mask)).long())
