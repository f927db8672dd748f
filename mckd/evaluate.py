"""mckd-eval: a checkpoint on a dataset split: mIoU, per-class IoU and accuracy, pixel accuracy; a table and JSON.

The numbers are computed exactly as training validates (same loader, transform, batch size and IoU metric),
so evaluating a checkpoint with the dataset config it carries (its own experiment's) reproduces the val mIoU its
step recorded, wherever the .ckpt file lies.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torchmetrics.classification import MulticlassConfusionMatrix

from mckd import layout
from mckd.atomic import write_json
from mckd.checkpoints import (
    ModelRef,
    dataset_config,
    read_checkpoint,
    require,
    require_same_classes,
    resolve_model,
    saved_dataset,
)
from mckd.data import IGNORE_INDEX, SegmentationData, SegmentationDataModule
from mckd.errors import MckdError
from mckd.modules.inference import InferenceSettings, class_probs, predictions_and_truth
from mckd.modules.segmentation import SegmentationModule, iou_metric, mean_iou
from mckd.pipeline.experiment import is_rank_zero
from mckd.progress import show_progress
from mckd.report import markdown_table, score

log = logging.getLogger("mckd")
SPLITS = ("val", "test")


class EvalConfigError(MckdError, ValueError):
    """An mckd-eval setting that cannot be used."""


class Evaluator(L.LightningModule):
    """Accumulates IoU (the training metric) and a confusion matrix of a model's predictions over a split."""

    def __init__(self, model: SegmentationModule, num_classes: int, flip: bool, window, stride):
        super().__init__()
        self.model = model
        self.flip, self.window, self.stride = flip, window, stride
        self.iou = iou_metric(num_classes)
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        probs = class_probs([self.model], batch["image"], flip=self.flip, window=self.window, stride=self.stride)
        for prediction, truth in predictions_and_truth(probs, batch):
            self.iou.update(prediction, truth)
            self.confusion.update(prediction, truth)

    def metrics(self, class_names: Sequence[str]) -> dict:
        per_class = self.iou.compute()
        confusion = self.confusion.compute().double()  # rows: truth, columns: prediction
        truth = confusion.sum(1)
        accuracy = confusion.diag() / truth
        return {
            "miou": _number(mean_iou(per_class)),
            "pixel_accuracy": _number(confusion.diag().sum() / confusion.sum()),
            "mean_accuracy": _number(accuracy.nanmean()),
            "per_class_iou": {n: _number(v) for n, v in zip(class_names, per_class)},
            "per_class_accuracy": {n: _number(v) for n, v in zip(class_names, accuracy)},
            "class_pixels": {n: int(v) for n, v in zip(class_names, truth)},
        }


def _number(value: torch.Tensor | float) -> float | None:
    """A float for JSON: NaN (a class absent from truth and prediction) becomes None."""
    value = float(value)
    return None if math.isnan(value) else value


def results_table(result: dict) -> str:
    """The per-class table and the summary line, as Markdown."""
    rows = [(name, score(iou), score(result["per_class_accuracy"][name]), result["class_pixels"][name])
            for name, iou in result["per_class_iou"].items()]
    lines = markdown_table(("class", "IoU", "accuracy", "pixels"), rows, right=(1, 2, 3))
    lines += ["", f"mIoU {score(result['miou'])}   pixel accuracy {score(result['pixel_accuracy'])}   "
                  f"mean class accuracy {score(result['mean_accuracy'])}"]
    return "\n".join(lines)


def default_output(ref: ModelRef, split: str, flip: bool, window) -> Path:
    """`<exp>/eval/<step>-<split>[-flip][-window].json` for `checkpoint=<exp>`, else beside the .ckpt file."""
    suffix = split + ("-flip" if flip else "") + ("-window" if window else "")
    if ref.experiment is not None:
        return ref.experiment / layout.EVAL / f"{ref.label}-{suffix}.json"
    return ref.checkpoint.with_name(f"{ref.checkpoint.stem}-{suffix}-eval.json")


def evaluate(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict:
    """Evaluate `cfg.checkpoint` on `cfg.split`; prints the table, writes the JSON and returns its content."""

    require(cfg, "checkpoint")
    if cfg.split not in SPLITS:
        raise EvalConfigError(f"split={cfg.split!r}: expected one of {SPLITS}")
    ref = resolve_model(cfg.checkpoint, cfg.step)
    contents = read_checkpoint(ref.checkpoint)
    module = SegmentationModule.from_checkpoint(str(ref.checkpoint), contents=contents)
    dataset = dataset_config(cfg, overrides, saved_dataset(contents), ref.checkpoint)
    data = SegmentationData.build(dataset)
    require_same_classes(ref.checkpoint, module.hparams.num_classes, dataset.name, data.num_classes)
    samples = data.splits.val if cfg.split == "val" else data.splits.test
    if not samples:
        raise EvalConfigError(f"dataset {dataset.name} has no {cfg.split} images (split={cfg.split})")
    settings = InferenceSettings.resolve(module.inference, cfg.flip, cfg.window, cfg.stride)
    flip, window, stride = settings.flip, settings.window, settings.stride
    evaluator = Evaluator(module, data.num_classes, flip, window, stride)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=show_progress(),
                        enable_model_summary=False, **OmegaConf.to_container(cfg.trainer, resolve=True))
    dm = SegmentationDataModule(data)
    loader = dm.val_dataloader() if cfg.split == "val" else dm.test_dataloader()
    trainer.validate(evaluator, dataloaders=loader, verbose=False)
    result = {
        "checkpoint": str(ref.checkpoint), "experiment": None if ref.experiment is None else str(ref.experiment),
        "step": ref.step or module.hparams.get("name"),  # a .ckpt alone: the step its module was trained as
        "dataset": dataset.name, "split": cfg.split, "num_images": len(samples),
        "inference": {"flip": flip, "window": window, "stride": stride if window else None},
        **evaluator.metrics(data.class_names),
    }
    if not is_rank_zero():
        return result
    output = Path(cfg.output) if cfg.output else default_output(ref, cfg.split, flip, window)
    write_json(output, result)
    where = f" (experiment {ref.experiment.name}, step {ref.step})" if ref.experiment else ""
    print(f"{ref.checkpoint}{where}\n{dataset.name} {cfg.split}: {len(samples)} images, flip TTA "
          f"{'on' if flip else 'off'}, sliding window {window or 'off'}\n\n{results_table(result)}\n")
    log.info("wrote %s", output)
    return result
