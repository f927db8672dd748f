"""LightningModules: the teacher (supervised), the students (pseudo-labels + noise) and the labeler."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from torch import nn
from torchmetrics.classification import MulticlassJaccardIndex

from mckd.checkpoints import first_sentence, not_a_checkpoint, read_checkpoint
from mckd.data.source import IGNORE_INDEX
from mckd.layout import TEACHER
from mckd.models import build_model
from mckd.modules.inference import (
    InferenceSettings,
    class_probs,
    grid_pixels,
    per_sample_labels,
    per_sample_probs,
    predictions_and_truth,
    stability_scores,
    stored_probs,
)
from mckd.modules.losses import SegmentationLoss
from mckd.seeding import derive_seed


def iou_metric(num_classes: int, sync: bool = True) -> MulticlassJaccardIndex:
    """Per-class IoU accumulated over a whole split; classes absent from both prediction and truth are NaN.

    `sync=False` for a metric that only one process computes (no all-gather across DDP ranks).
    """
    return MulticlassJaccardIndex(num_classes, ignore_index=IGNORE_INDEX, average="none",
                                  zero_division=float("nan"), sync_on_compute=sync)


def mean_iou(per_class: torch.Tensor) -> torch.Tensor:
    return per_class.nanmean()


# optim.name -> the optimizer and the optim.* keys it takes, with their values when a config leaves one out (or null)
OPTIMIZERS = {
    "adamw": {"_target_": "torch.optim.AdamW", "weight_decay": 1e-4},
    "sgd": {"_target_": "torch.optim.SGD", "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False},
}


def optimizer(cfg: Mapping) -> Callable[..., torch.optim.Optimizer]:
    """The optimizer of an `optim` config, still to be given the parameters: `optimizer(cfg)(module.parameters())`."""
    if cfg["name"] not in OPTIMIZERS:
        raise ValueError(f"optim.name={cfg['name']!r}: expected {' or '.join(map(repr, OPTIMIZERS))}")
    spec = OPTIMIZERS[cfg["name"]]
    kwargs = {key: default if cfg.get(key) is None else cfg[key]
              for key, default in spec.items() if key != "_target_"}
    return instantiate({"_target_": spec["_target_"], "_partial_": True, "lr": cfg["lr"], **kwargs})


class SegmentationModule(L.LightningModule):
    """A segmentation network trained with cross-entropy (+ optional Dice) on ground truth: the teacher."""

    def __init__(self, model: Mapping, num_classes: int, class_names: Sequence[str], optim: Mapping,
                 loss: Mapping | None = None, inference: Mapping | None = None, name: str = TEACHER,
                 channels_last: bool = False, dataset: Mapping | None = None):
        # `dataset`: accepted for loading older checkpoints, which kept the dataset config here; their DataModule
        # keeps it now (datamodule_hyper_parameters, mckd/data/datamodule.py)
        super().__init__()
        self.save_hyperparameters()
        self.net = build_model(model, num_classes)
        self.class_names = list(class_names)
        self.criterion = SegmentationLoss.from_config(loss)
        self.inference = dict(inference or {})
        self.val_iou, self.test_iou = iou_metric(num_classes), iou_metric(num_classes)

    @classmethod
    def from_checkpoint(cls, path: str, map_location: str | torch.device = "cpu",
                        contents: Mapping | None = None) -> SegmentationModule:
        """Load a trained module, as weights only; NotACheckpointError (one line) for a file that is not one.

        Encoder weights come from the checkpoint, never re-read from their file. `contents`: the file as
        `read_checkpoint` returned it, where the caller has read it already.
        """
        hparams = (contents or read_checkpoint(path))["hyper_parameters"]
        try:
            return cls.load_from_checkpoint(path, map_location=map_location, weights_only=True,
                                            model={**hparams["model"], "encoder_weights": None})
        except (KeyError, RuntimeError, TypeError, ValueError) as err:  # saved by another model or mckd version
            raise not_a_checkpoint(path, f"its model cannot be rebuilt ({type(err).__name__}: "
                                         f"{first_sentence(str(err))})") from None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        parts = self.criterion(self(batch["image"]), batch)
        n = len(batch["image"])
        terms = {f"train/{k}": v for k, v in parts.items() if k != "loss"}
        if len(terms) > 1:  # the loss alone is logged as train/loss
            self.log_dict(terms, batch_size=n)
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=n)
        return parts["loss"]

    def eval_probs(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities with this model's validation settings (flip TTA, sliding window)."""
        settings = InferenceSettings.resolve(self.inference)
        return class_probs([self], images, settings.flip, settings.window, settings.stride)

    def _eval_step(self, batch: dict, metric: MulticlassJaccardIndex) -> None:
        probs = self.eval_probs(batch["image"])
        for prediction, truth in predictions_and_truth(probs, batch):
            metric.update(prediction, truth)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_iou)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_iou)

    def _log_iou(self, prefix: str, metric: MulticlassJaccardIndex) -> None:
        per_class = metric.compute()
        metric.reset()
        self.log(f"{prefix}/miou", mean_iou(per_class), prog_bar=True)
        for name, iou in zip(self.class_names, per_class):
            self.log(f"{prefix}/iou/{name}", iou)

    def on_validation_epoch_end(self) -> None:
        self._log_iou("val", self.val_iou)

    def on_test_epoch_end(self) -> None:
        self._log_iou("test", self.test_iou)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        probs = self.eval_probs(batch["image"])
        return per_sample_labels(probs, batch, self.inference.get("soft_topk", 0))

    def configure_optimizers(self):
        cfg = self.hparams.optim
        opt = optimizer(cfg)(self.parameters())
        # lr * (1 - step / total) ** power, stepped after every optimizer step
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=total, power=cfg.get("poly_power", 0.9))
        # the name is the key LearningRateMonitor (configure_callbacks) logs the learning rate under
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "train/lr"}}

    def configure_callbacks(self):
        return [LearningRateMonitor(logging_interval="step")]


def cutmix(batch: dict, generator: torch.Generator, prob: float = 0.5) -> dict:
    """Per sample, with chance `prob`: paste a random box from another pseudo-labeled sample of the batch into
    a pseudo-labeled sample and its label planes (UniMatch's CutMix). Ground-truth samples are never mixed."""
    images = batch["image"]
    n, _, h, w = images.shape
    pseudo = batch.get("pseudo", torch.ones(n, dtype=torch.bool)).cpu()
    donors = torch.nonzero(pseudo).flatten().tolist()
    mixed = {k: v.clone() if k in CUTMIX_KEYS else v for k, v in batch.items()}
    if len(donors) < 2:
        return mixed
    for i in donors:
        if torch.rand(1, generator=generator).item() >= prob:
            continue
        others = [d for d in donors if d != i]
        j = others[int(torch.randint(len(others), (1,), generator=generator))]
        area = torch.empty(1).uniform_(0.02, 0.4, generator=generator).item()  # box area share (UniMatch)
        aspect = torch.empty(1).uniform_(0.3, 1 / 0.3, generator=generator).item()
        bh = min(h, max(1, int(round((area * h * w / aspect) ** 0.5))))
        bw = min(w, max(1, int(round((area * h * w * aspect) ** 0.5))))
        top = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
        for key in CUTMIX_KEYS & batch.keys():
            mixed[key][i, ..., top: top + bh, left: left + bw] = batch[key][j, ..., top: top + bh, left: left + bw]
    return mixed


CUTMIX_KEYS = {"image", "mask", "soft_ids", "soft_probs"}


class StudentModule(SegmentationModule):
    """A student (pair member or final): pseudo-label losses, plus CutMix among its pseudo-labeled images."""

    def __init__(self, *args, cutmix_prob: float = 0.0, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.cutmix_prob, self.seed = cutmix_prob, seed

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.cutmix_prob > 0:  # a generator per optimizer step: the same boxes after a resume
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "cutmix", self.global_step))
            batch = cutmix(batch, generator, self.cutmix_prob)
        return super().training_step(batch, batch_idx)


class Labeler(L.LightningModule):
    """Labels images with the mean class probabilities of several networks (cross-labeling ensembles), over
    flips and scales; with `previous` (a reader of the last stage's labels), the result is
    `(1 - previous_weight) * new + previous_weight * previous`. With `stability` (earlier checkpoints, then the
    final one), each item also gets its image's `stability_scores` (pseudo.reliable_fraction). `offsets` shift
    the classes before the labels are taken (pseudo.match_class_shares); `sample_pixels` makes it predict a grid
    of each image's probabilities instead of labels (what those offsets are fitted on)."""

    def __init__(self, nets: Sequence[nn.Module], flip: bool = False, window: Sequence[int] | None = None,
                 stride: Sequence[int] | None = None, soft_topk: int = 0, scales: Sequence[float] = (1.0,),
                 previous=None, previous_weight: float = 0.0, stability: Sequence[nn.Module] = (),
                 offsets: torch.Tensor | None = None, sample_pixels: bool = False):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.stability = nn.ModuleList(stability)
        self.flip, self.window, self.stride, self.soft_topk = flip, window, stride, soft_topk
        self.scales = tuple(scales)
        self.previous, self.previous_weight = previous, previous_weight
        self.offsets, self.sample_pixels = offsets, sample_pixels

    def blend_previous(self, sample_id: str, probs: torch.Tensor) -> torch.Tensor:
        old = stored_probs(self.previous.read(sample_id), probs.shape[0]).to(probs.device)
        return (1 - self.previous_weight) * probs + self.previous_weight * old

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        probs = class_probs(list(self.nets), batch["image"], self.flip, self.window, self.stride, self.scales)
        blend = self.blend_previous if self.previous is not None and self.previous_weight > 0 else None
        if self.sample_pixels:
            return [grid_pixels(p).cpu() for p in per_sample_probs(probs, batch, blend)]
        items = per_sample_labels(probs, batch, self.soft_topk, blend, self.offsets)
        if len(self.stability):
            scores = stability_scores(list(self.stability), batch, self.window, self.stride)
            for item, score in zip(items, scores):
                item["stability"] = score
        return items
