"""Class probabilities from one or more networks, with flip TTA and sliding windows, and hard/soft labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def window_starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def sliding_window_probs(net: nn.Module, images: torch.Tensor, window: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Softmax probabilities averaged over overlapping windows."""
    h, w = images.shape[-2:]
    probs = counts = None
    for top in window_starts(h, window[0], stride[0]):
        for left in window_starts(w, window[1], stride[1]):
            crop = images[..., top: top + window[0], left: left + window[1]]
            p = net(crop).float().softmax(1)
            if probs is None:
                probs = images.new_zeros((images.shape[0], p.shape[1], h, w), dtype=torch.float32)
                counts = images.new_zeros((1, 1, h, w), dtype=torch.float32)
            probs[..., top: top + crop.shape[-2], left: left + crop.shape[-1]] += p
            counts[..., top: top + crop.shape[-2], left: left + crop.shape[-1]] += 1
    return probs / counts


def class_probs(nets: Sequence[nn.Module], images: torch.Tensor, flip: bool = False,
                window: Sequence[int] | None = None, stride: Sequence[int] | None = None) -> torch.Tensor:
    """Mean softmax probabilities of `nets` over `images`, optionally with horizontal-flip TTA."""

    def run(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if window is not None:
            return sliding_window_probs(net, x, window, stride or window)
        return net(x).float().softmax(1)

    total = None
    views = [False, True] if flip else [False]
    for net in nets:
        for flipped in views:
            p = run(net, images.flip(-1)) if flipped else run(net, images)
            p = p.flip(-1) if flipped else p
            total = p if total is None else total + p
    return total / (len(nets) * len(views))


def per_sample_labels(probs: torch.Tensor, batch: dict, soft_topk: int = 0) -> list[dict]:
    """Per sample, at its original size: hard label, confidence (max prob), and optional top-k ids and probs."""
    out = []
    for i, sample_id in enumerate(batch["id"]):
        ih, iw = (int(v) for v in batch["input_size"][i])
        oh, ow = (int(v) for v in batch["size"][i])
        p = probs[i: i + 1, :, :ih, :iw]
        if (ih, iw) != (oh, ow):
            p = F.interpolate(p, size=(oh, ow), mode="bilinear", align_corners=False)
        p = p[0]
        confidence, label = p.max(0)
        item = {"id": sample_id, "label": label.to(torch.int32).cpu(), "confidence": confidence.cpu()}
        if soft_topk:
            top_p, top_i = p.topk(soft_topk, dim=0)
            item.update(soft_ids=top_i.to(torch.int32).cpu(), soft_probs=top_p.to(torch.float16).cpu())
        out.append(item)
    return out
