"""The training losses: every term honours the per-sample weight (`labeled_weight`), Dice as smp computes it."""

import pytest
import torch
from segmentation_models_pytorch.losses import DiceLoss

from mckd.modules.losses import SegmentationLoss, weighted_dice

N, C, H, W, K = 2, 4, 8, 8, 3


def batch(weight: tuple[float, ...]) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)
    logits = torch.randn(N, C, H, W)
    mask = torch.randint(0, C, (N, H, W))
    mask[0, :2] = 255  # ignored pixels
    probs, ids = torch.rand(N, C, H, W).softmax(1).topk(K, dim=1)
    ids[1, :, :3] = 255  # pixels without a soft label
    return logits, {"mask": mask, "soft_ids": ids, "soft_probs": probs, "weight": torch.tensor(weight)}


def terms(weight: tuple[float, ...]) -> dict[str, float]:
    logits, data = batch(weight)
    loss = SegmentationLoss(ce_weight=1.0, soft_weight=1.0, dice_weight=1.0, temperature=2.0)
    return {k: v.item() for k, v in loss(logits, data).items()}


@pytest.mark.parametrize("absent_class", [False, True])
def test_dice_is_smps_dice_loss_when_every_weight_is_one(absent_class):
    logits, data = batch((1.0, 1.0))
    mask = data["mask"].masked_fill(data["mask"] == C - 1, 0) if absent_class else data["mask"]
    expected = DiceLoss("multiclass", ignore_index=255)(logits, mask)
    assert weighted_dice(logits, mask, data["weight"]).item() == pytest.approx(expected.item(), abs=1e-6)


def test_a_weight_of_two_counts_a_samples_pixels_twice_in_dice():
    logits, data = batch((2.0, 1.0))
    twice = torch.cat([logits[:1], logits]), torch.cat([data["mask"][:1], data["mask"]])
    expected = DiceLoss("multiclass", ignore_index=255)(*twice)
    assert weighted_dice(logits, data["mask"], data["weight"]).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("term", ["ce", "kd"])
def test_cross_entropy_and_distillation_are_linear_in_the_sample_weights(term):
    both, first, second = terms((2.0, 1.0))[term], terms((1.0, 0.0))[term], terms((0.0, 1.0))[term]
    assert first > 0 and second > 0
    assert both == pytest.approx(2 * first + second, rel=1e-6)


def test_labeled_weight_scales_every_term_of_the_loss():
    plain, weighted = terms((1.0, 1.0)), terms((3.0, 1.0))
    for term in ("ce", "kd", "dice"):
        assert weighted[term] != pytest.approx(plain[term], rel=1e-3), term
    assert weighted["loss"] == pytest.approx(weighted["ce"] + weighted["kd"] + weighted["dice"], rel=1e-6)
