"""ST++'s reliable-image selection (`pseudo.reliable_fraction`): the teacher saves itself after 1/3 and 2/3 of
its epochs; when it labels, each unlabeled image is scored by how much those earlier checkpoints agree with the
final one (`mckd.modules.inference.stability_scores`), and the first students train only on the most stable
share of the images. Later stages use every image, as ST++'s second re-training does.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from mckd.data.source import Sample
from mckd.errors import MckdError

log = logging.getLogger("mckd")


class ReliabilityError(MckdError, ValueError):
    """A student would be left with no pseudo-labeled image by pseudo.reliable_fraction."""


def snapshot_epochs(epochs: int) -> list[int]:
    """After how many epochs the earlier checkpoints are taken: ST++'s epochs // 3 and epochs * 2 // 3."""
    return [epochs // 3, epochs * 2 // 3]


class SnapshotCheckpoint(Callback):
    """Saves the model after each number of epochs in `paths` ({epochs: file}), through the trainer, so that the
    file is written atomically and holds what best.ckpt would (the average, with train.ema_decay)."""

    def __init__(self, paths: Mapping[int, Path]):
        self.paths = dict(paths)
        self.saved_at = -1  # the global step of the last snapshot

    def save(self, trainer: L.Trainer) -> None:
        path = self.paths.get(trainer.current_epoch + 1)
        if path is not None and trainer.global_step != self.saved_at:
            trainer.save_checkpoint(path)
            self.saved_at = trainer.global_step

    # ModelCheckpoint writes last.ckpt in one of these two hooks, after this callback (Lightning calls checkpoint
    # callbacks last): a run killed in between resumes before this epoch, so no snapshot is ever skipped
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)  # again unless validation at this epoch's end saved it: a mid-epoch one was early


def least_stable(scores: Mapping[str, float], fraction: float) -> list[str]:
    """The ids outside the `fraction` most stable (ST++ keeps the first int(n * fraction) by descending score;
    equal scores are ordered by id), sorted."""
    ranked = sorted(scores, key=lambda i: (-scores[i], i))
    keep = int(len(ranked) * fraction + 1e-9)  # 0.7 * 10 is 7.000000000000001, 0.29 * 100 is 28.999999999999996
    return sorted(ranked[keep:])


def reliable_only(samples: list[Sample], unreliable: Collection[str], step: str) -> list[Sample]:
    """`samples` without the unreliable ones; ReliabilityError when none is left."""
    if not unreliable:
        return samples
    kept = [s for s in samples if s.id not in unreliable]
    if not kept:
        raise ReliabilityError(f"{step}: all {len(samples)} of its images are among the least stable that "
                               "pseudo.reliable_fraction leaves out: raise pseudo.reliable_fraction or use fewer "
                               "num_partitions")
    log.info("%s: trains on %d of its %d images, the rest left out as unreliable (pseudo.reliable_fraction)",
             step, len(kept), len(samples))
    return kept
