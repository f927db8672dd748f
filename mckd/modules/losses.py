"""Training losses: hard cross-entropy, soft KD with temperature and Dice, each with per-sample weights (a
labeled image's `labeled_weight`, 1 for a pseudo-labeled one) and ignoring label 255."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from mckd.data.source import IGNORE_INDEX


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over non-ignored pixels, each sample's pixels scaled by its weight."""
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    valid = (target != IGNORE_INDEX).float()
    w = weight.view(-1, 1, 1).float() * valid
    return (per_pixel * w).sum() / valid.sum().clamp_min(1.0)


def soft_distillation(logits: torch.Tensor, soft_ids: torch.Tensor, soft_probs: torch.Tensor,
                      weight: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(target || student) on the stored top-k class probabilities, scaled by T^2; averaged over the pixels with
    a soft label, each sample's pixels scaled by its weight (as in `weighted_cross_entropy`)."""
    valid = soft_ids[:, 0] != IGNORE_INDEX
    ids = soft_ids.clamp_max(logits.shape[1] - 1)
    target = soft_probs.float().clamp_min(0)
    if temperature != 1.0:
        target = target.pow(1.0 / temperature)
    target = target / target.sum(1, keepdim=True).clamp_min(1e-8)
    log_q = F.log_softmax(logits.float() / temperature, dim=1).gather(1, ids)
    kl = (target * (target.clamp_min(1e-8).log() - log_q)).sum(1)
    return (kl * valid * weight.view(-1, 1, 1).float()).sum() / valid.sum().clamp_min(1) * temperature**2


def weighted_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """segmentation-models-pytorch's multiclass DiceLoss (soft Dice per class over the whole batch, mean over all
    classes with 0 for a class absent from the batch, label 255 ignored), with each sample's pixels counted
    `weight` times: smp's DiceLoss has no sample weights. Equal to it when every weight is 1; a weight of 2
    equals the sample twice in the batch."""
    probs = logits.float().log_softmax(dim=1).exp()
    valid = target != IGNORE_INDEX
    truth = F.one_hot(torch.where(valid, target, 0), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    w = (weight.view(-1, 1, 1).float() * valid).unsqueeze(1)  # N, 1, H, W
    dims = (0, 2, 3)
    intersection = (probs * truth * w).sum(dims)
    cardinality = ((probs + truth) * w).sum(dims)
    loss = 1.0 - 2.0 * intersection / cardinality.clamp_min(eps)
    present = (truth * w).sum(dims) > 0  # smp: a class absent from the batch adds 0
    return (loss * present).mean()


class SegmentationLoss(torch.nn.Module):
    """ce_weight * CE + soft_weight * KD + dice_weight * Dice; terms with weight 0 are skipped."""

    def __init__(self, ce_weight: float = 1.0, soft_weight: float = 0.0, dice_weight: float = 0.0,
                 temperature: float = 1.0):
        super().__init__()
        self.ce_weight, self.soft_weight, self.dice_weight = ce_weight, soft_weight, dice_weight
        self.temperature = temperature

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> SegmentationLoss:
        keys = ("ce_weight", "soft_weight", "dice_weight", "temperature")
        return cls(**{k: v for k, v in dict(cfg or {}).items() if k in keys})

    def forward(self, logits: torch.Tensor, batch: Mapping) -> dict[str, torch.Tensor]:
        parts: dict[str, torch.Tensor] = {}
        weight = batch.get("weight", torch.ones(len(logits), device=logits.device))
        if self.ce_weight:
            parts["ce"] = self.ce_weight * weighted_cross_entropy(logits, batch["mask"], weight)
        if self.soft_weight and "soft_ids" in batch:
            parts["kd"] = self.soft_weight * soft_distillation(logits, batch["soft_ids"], batch["soft_probs"],
                                                                weight, self.temperature)
        if self.dice_weight:
            parts["dice"] = self.dice_weight * weighted_dice(logits, batch["mask"], weight)
        parts["loss"] = sum(parts.values())
        return parts
