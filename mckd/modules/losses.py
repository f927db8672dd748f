"""Training losses: hard cross-entropy (ignore 255, per-sample weights), soft KD with temperature, Dice."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss

from mckd.data.source import IGNORE_INDEX


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over non-ignored pixels, each sample's pixels scaled by its weight."""
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    valid = (target != IGNORE_INDEX).float()
    w = weight.view(-1, 1, 1).float() * valid
    return (per_pixel * w).sum() / valid.sum().clamp_min(1.0)


def soft_distillation(logits: torch.Tensor, soft_ids: torch.Tensor, soft_probs: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """KL(target || student) on the stored top-k class probabilities, scaled by T^2."""
    valid = soft_ids[:, 0] != IGNORE_INDEX
    ids = soft_ids.clamp_max(logits.shape[1] - 1)
    target = soft_probs.float().clamp_min(0)
    if temperature != 1.0:
        target = target.pow(1.0 / temperature)
    target = target / target.sum(1, keepdim=True).clamp_min(1e-8)
    log_q = F.log_softmax(logits.float() / temperature, dim=1).gather(1, ids)
    kl = (target * (target.clamp_min(1e-8).log() - log_q)).sum(1)
    return (kl * valid).sum() / valid.sum().clamp_min(1) * temperature**2


class SegmentationLoss(torch.nn.Module):
    """ce_weight * CE + soft_weight * KD + dice_weight * Dice; terms with weight 0 are skipped."""

    def __init__(self, ce_weight: float = 1.0, soft_weight: float = 0.0, dice_weight: float = 0.0,
                 temperature: float = 1.0):
        super().__init__()
        self.ce_weight, self.soft_weight, self.dice_weight = ce_weight, soft_weight, dice_weight
        self.temperature = temperature
        self.dice = DiceLoss("multiclass", ignore_index=IGNORE_INDEX) if dice_weight else None

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
                                                                self.temperature)
        if self.dice is not None:
            parts["dice"] = self.dice_weight * self.dice(logits.float(), batch["mask"])
        parts["loss"] = sum(parts.values())
        return parts
