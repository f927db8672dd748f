"""An experiment directory: where each step's artifacts live, and which steps are done."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from mckd import layout
from mckd.atomic import read_json, write_json
from mckd.checkpoints import CheckpointError, NotACheckpointError, read_checkpoint
from mckd.errors import MckdError
from mckd.pipeline.store import PseudoLabelStore
from mckd.records import LabelRecord, ModelRecord

log = logging.getLogger("mckd")


def is_rank_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


def barrier() -> None:
    """Wait for every process when running distributed; a no-op otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def gather(value: object) -> list:
    """Every process's `value`, in rank order, when running distributed; [value] otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, value)
        return out
    return [value]


def set_aside(path: Path) -> Path:
    """Rename a damaged file to `<name>.corrupt-<UTC time>` beside it, kept for inspection; returns the new path."""
    aside = path.with_name(f"{path.name}.corrupt-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
    path.replace(aside)
    return aside


class MissingStepError(MckdError, FileNotFoundError):
    """A step needs an earlier step's artifacts that are not in the experiment directory."""


class Experiment:
    """Paths of one experiment (see mckd.layout) and its per-step records, written when a step ends."""

    def __init__(self, directory: str | Path, num_classes: int):
        self.dir = Path(directory)
        self.store = PseudoLabelStore(layout.pseudo_label_dir(self.dir), num_classes)

    def checkpoint_dir(self, step: str) -> Path:
        return layout.checkpoint_dir(self.dir, step)

    def last_checkpoint(self, step: str) -> Path | None:
        last = layout.last_checkpoint(self.dir, step)
        return last if last.is_file() else None

    def resume_checkpoint(self, step: str) -> Path | None:
        """`last.ckpt` to resume `step` from; one that does not load is set aside and the step starts afresh."""
        last = self.last_checkpoint(step)
        if last is None:
            return None
        try:
            read_checkpoint(last)
        except NotACheckpointError as err:
            if is_rank_zero():  # every rank finds it torn; one renames it
                aside = set_aside(last)
                log.warning("%s: cannot resume: %s; moved it to %s, training starts over", step, err, aside.name)
            return None
        except CheckpointError:
            if last.exists():
                raise
            return None  # rank zero set it aside while this rank was reading it
        return last

    def record_path(self, step: str) -> Path:
        return layout.record_path(self.dir, step)

    def finished(self, step: str) -> bool:
        return self.record_path(step).is_file()

    def model_record(self, step: str) -> ModelRecord | None:
        path = self.record_path(step)
        return ModelRecord.from_json(read_json(path)) if path.is_file() else None

    def label_record(self, stage: int) -> LabelRecord | None:
        path = self.record_path(layout.label_step(stage))
        return LabelRecord.from_json(read_json(path)) if path.is_file() else None

    def save_record(self, record: ModelRecord | LabelRecord) -> None:
        if is_rank_zero():
            write_json(self.record_path(record.name), record.to_json())

    def require_record(self, step: str, needed_by: str) -> ModelRecord:
        record = self.model_record(step)
        if record is None:
            raise MissingStepError(
                f"{needed_by} needs step '{step}', which has not finished in {self.dir} "
                f"(no {self.record_path(step)}): run it first, e.g. with stage=all")
        return record
