"""Class probabilities from one or more networks, with flip TTA and sliding windows, and hard/soft labels."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class InferenceSettings:
    """Flip TTA and sliding window (stride defaults to the window) for validation, mckd-eval and prediction."""

    flip: bool = False
    window: list[int] | None = None
    stride: list[int] | None = None

    @classmethod
    def resolve(cls, trained: Mapping, flip: bool | None = None, window: Sequence[int] | None = None,
                stride: Sequence[int] | None = None) -> InferenceSettings:
        """The settings given, each one left None taken from `trained` (a checkpoint's validation settings)."""
        window = trained.get("window") if window is None else list(window)
        stride = (trained.get("stride") if stride is None else list(stride)) or window
        return cls(bool(trained.get("flip", False) if flip is None else flip), window, stride)


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
                window: Sequence[int] | None = None, stride: Sequence[int] | None = None,
                scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """Mean softmax probabilities of `nets` over `images`, optionally with horizontal-flip TTA and at several
    scales (each view resized back to the input size before averaging)."""
    size = images.shape[-2:]

    def run(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if window is not None:
            return sliding_window_probs(net, x, window, stride or window)
        return net(x).float().softmax(1)

    def view(net: nn.Module, scale: float, flipped: bool) -> torch.Tensor:
        x = images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        p = run(net, x.flip(-1)).flip(-1) if flipped else run(net, x)
        return p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear", align_corners=False)

    views = [(scale, flipped) for scale in scales for flipped in ([False, True] if flip else [False])]
    total = None
    for net in nets:
        for scale, flipped in views:
            p = view(net, float(scale), flipped)
            total = p if total is None else total + p
    return total / (len(nets) * len(views))


def stored_probs(stored: dict, num_classes: int) -> torch.Tensor:
    """A CxHxW distribution from a stored pseudo-label: its top-k probabilities when kept, else the hard label
    at its confidence with the rest spread evenly over the other classes."""
    if "soft_ids" in stored:
        ids = torch.from_numpy(stored["soft_ids"].astype("int64"))
        probs = torch.from_numpy(stored["soft_probs"].astype("float32"))
        out = torch.zeros((num_classes, *ids.shape[1:]))
        return out.scatter_add_(0, ids.clamp(0, num_classes - 1), probs)
    label = torch.from_numpy(stored["label"].astype("int64"))[None]
    confidence = torch.from_numpy(stored["confidence"].astype("float32"))[None] / 255
    rest = (1 - confidence) / max(1, num_classes - 1)
    out = rest.expand(num_classes, *label.shape[1:]).clone()
    return out.scatter_(0, label, confidence)


def original_size_probs(probs: torch.Tensor, batch: dict, index: int) -> torch.Tensor:
    """Sample `index`'s CxHxW probabilities at its original size (the batch's images may be resized and padded)."""
    ih, iw = (int(v) for v in batch["input_size"][index])
    oh, ow = (int(v) for v in batch["size"][index])
    p = probs[index: index + 1, :, :ih, :iw]
    if (ih, iw) != (oh, ow):
        p = F.interpolate(p, size=(oh, ow), mode="bilinear", align_corners=False)
    return p[0]


def predictions_and_truth(probs: torch.Tensor, batch: dict) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(prediction, ground truth) of each sample of an evaluation batch, at the ground truth's own size."""
    for i in range(len(batch["mask"])):
        h, w = (int(v) for v in batch["size"][i])
        yield original_size_probs(probs, batch, i).argmax(0)[None], batch["mask"][i: i + 1, :h, :w]


def agreement_miou(prediction: torch.Tensor, reference: torch.Tensor, num_classes: int) -> float:
    """mIoU of one class map against another over the classes either holds (ST++'s meanIOU: a class absent
    from both is skipped, not counted as 0 or 1)."""
    pairs = reference.flatten().long() * num_classes + prediction.flatten().long()
    hist = torch.bincount(pairs, minlength=num_classes**2).view(num_classes, num_classes)
    inter = hist.diag()
    union = hist.sum(0) + hist.sum(1) - inter
    present = union > 0
    return (inter[present].float() / union[present].float()).mean().item()


def stability_scores(nets: Sequence[nn.Module], batch: dict, window: Sequence[int] | None = None,
                     stride: Sequence[int] | None = None) -> list[float]:
    """ST++'s reliability of each image of a batch: the mean over `nets[:-1]` (earlier checkpoints) of the mIoU
    between their prediction and that of `nets[-1]` (the final one); single-scale and unflipped, as ST++ predicts."""
    maps = [class_probs([net], batch["image"], window=window, stride=stride) for net in nets]
    scores = []
    for i in range(len(batch["id"])):
        *earlier, final = [original_size_probs(p, batch, i).argmax(0) for p in maps]
        scores.append(sum(agreement_miou(e, final, maps[0].shape[1]) for e in earlier) / len(earlier))
    return scores


def grid_pixels(probs: torch.Tensor, limit: int = 4096) -> torch.Tensor:
    """The pixels of a CxHxW map on a regular grid of at most `limit` points, as an (n, C) tensor: a fixed-size
    sample of every image, so that fitting class offsets over a whole split fits in memory at any image size."""
    c, h, w = probs.shape
    step = max(1, math.ceil(math.sqrt(h * w / limit)))
    return probs[:, ::step, ::step].reshape(c, -1).T


def share_matching_offsets(probs: torch.Tensor, shares: torch.Tensor, sweeps: int = 50,
                           tolerance: float = 1e-3) -> torch.Tensor:
    """Per-class offsets b to the log-probabilities of `probs` (n pixels x C) such that argmax(log p + b) gives
    each class its share in `shares` of the pixels: DARS's re-distribution of biased pseudo-labels (He et al.,
    ICCV 2021), which matches the labeled set's class distribution with per-class thresholds, here with offsets.

    Class by class, an offset is set to the value that gives that class exactly its share with the others' fixed
    (a quantile of its margins); sweeps repeat until every share is within `tolerance` (total variation). The
    offsets that came closest are returned, centred on 0."""
    scores = probs.float().clamp_min(1e-12).log()
    n, classes = scores.shape
    target = shares.double() / shares.sum()
    wanted = (target * n).round().long().clamp(0, n).tolist()
    offsets = torch.zeros(classes)

    def distance(b: torch.Tensor) -> float:
        counts = torch.bincount((scores + b).argmax(1), minlength=classes).double()
        return 0.5 * float((counts / n - target).abs().sum())

    best, best_distance = offsets.clone(), distance(offsets)
    for _ in range(sweeps):
        if best_distance < tolerance:
            break
        for c in range(classes):
            others = (scores + offsets).index_fill(1, torch.tensor([c]), float("-inf")).amax(1)
            margins = others - scores[:, c]  # class c wins a pixel when its offset exceeds the pixel's margin
            k = wanted[c]
            low = margins.kthvalue(k).values if k > 0 else margins.min() - 1
            high = margins.kthvalue(k + 1).values if k < n else margins.max() + 1
            offsets[c] = (low + high) / 2
        offsets -= offsets.mean()
        current = distance(offsets)
        if current < best_distance:
            best, best_distance = offsets.clone(), current
    return best


def shifted(probs: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """CxHxW probabilities with per-class `offsets` added to their logarithms, normalised again."""
    return (probs.clamp_min(1e-12).log() + offsets.to(probs.device).view(-1, 1, 1)).softmax(0)


def per_sample_probs(probs: torch.Tensor, batch: dict,
                     blend: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> Iterator[torch.Tensor]:
    """Each sample's CxHxW probabilities at its original size; `blend(id, probs)` may mix in another distribution
    (e.g. the previous stage's labels)."""
    for i, sample_id in enumerate(batch["id"]):
        p = original_size_probs(probs, batch, i)
        yield p if blend is None else blend(sample_id, p)


def per_sample_labels(probs: torch.Tensor, batch: dict, soft_topk: int = 0,
                      blend: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                      offsets: torch.Tensor | None = None) -> list[dict]:
    """Per sample, at its original size: hard label, confidence (max prob), and optional top-k ids and probs;
    `blend(id, probs)` may first mix in another distribution (e.g. the previous stage's labels), and `offsets`
    then shift the classes (`share_matching_offsets`)."""
    out = []
    for sample_id, p in zip(batch["id"], per_sample_probs(probs, batch, blend)):
        if offsets is not None:
            p = shifted(p, offsets)
        confidence, label = p.max(0)
        item = {"id": sample_id, "label": label.to(torch.int32).cpu(), "confidence": confidence.cpu()}
        if soft_topk:
            top_p, top_i = p.topk(soft_topk, dim=0)
            item.update(soft_ids=top_i.to(torch.int32).cpu(), soft_probs=top_p.to(torch.float16).cpu())
        out.append(item)
    return out
