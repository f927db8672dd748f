"""Pseudo-labeling as a Lightning predict loop whose callback writes each sample to the store."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from mckd.data.source import Sample, SegmentationSource
from mckd.modules.segmentation import iou_metric
from mckd.pipeline.store import PseudoLabelStore, StageReader
from mckd.progress import progress


class PseudoLabelWriter(BasePredictionWriter):
    """Writes predictions on background threads, so PNG encoding overlaps with the next batch's compute.

    Under DDP each rank writes the samples it predicted; every file is written atomically.
    """

    def __init__(self, store: PseudoLabelStore, stage: int, threads: int = 2, max_pending: int = 64):
        super().__init__(write_interval="batch")
        self.store, self.stage = store, stage
        self.threads, self.max_pending = threads, max_pending
        self.bytes_written = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pool = ThreadPoolExecutor(self.threads)

    def _write(self, item: dict) -> int:
        soft = "soft_ids" in item
        return self.store.write_sample(self.stage, item["id"], item["label"].numpy(), item["confidence"].numpy(),
                                       item["soft_ids"].numpy() if soft else None,
                                       item["soft_probs"].numpy() if soft else None, item.get("stability"))

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for item in prediction:
            self._pending.append(self._pool.submit(self._write, item))
        while len(self._pending) > self.max_pending:  # bounded queue: memory stays flat
            self.bytes_written += self._pending.popleft().result()

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        while self._pending:
            self.bytes_written += self._pending.popleft().result()
        self._pool.shutdown()


def pseudo_label_iou(source: SegmentationSource, samples: list[Sample], reader: StageReader) -> torch.Tensor | None:
    """Per-class IoU of stored labels against the samples' own ground truth; None when none of them has any."""
    metric = iou_metric(source.num_classes, sync=False)  # computed on rank 0 alone
    seen = 0
    for sample in progress(samples, desc="pseudo-label mIoU"):
        if sample.mask is None:
            continue
        truth = source.read_mask(sample)
        label = reader.read(sample.id)["label"]
        metric.update(torch.from_numpy(label.astype("int64"))[None], torch.from_numpy(truth.astype("int64"))[None])
        seen += 1
    return metric.compute() if seen else None
