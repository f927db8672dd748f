"""An experiment directory: where each step's artifacts live, and which steps are done."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from mckd.errors import MckdError
from mckd.pipeline.atomic import read_json, write_json
from mckd.pipeline.store import PseudoLabelStore


def is_rank_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


def barrier() -> None:
    """Wait for every process when running distributed; a no-op otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def student_names(stage: int, num_partitions: int) -> list[str]:
    """stage1-a, stage1-b, ...: member i trains on partition i."""
    return [f"stage{stage}-{chr(ord('a') + i)}" for i in range(num_partitions)]


class MissingStepError(MckdError, FileNotFoundError):
    """A step needs an earlier step's artifacts that are not in the experiment directory."""


class Experiment:
    """Paths of one experiment and its per-step records (`steps/<name>.json`, written when a step ends)."""

    def __init__(self, directory: str | Path, num_classes: int):
        self.dir = Path(directory)
        self.store = PseudoLabelStore(self.dir / "pseudo_labels", num_classes)

    def checkpoint_dir(self, step: str) -> Path:
        return self.dir / "checkpoints" / step

    def last_checkpoint(self, step: str) -> Path | None:
        last = self.checkpoint_dir(step) / "last.ckpt"
        return last if last.is_file() else None

    def record_path(self, step: str) -> Path:
        return self.dir / "steps" / f"{step}.json"

    def record(self, step: str) -> dict | None:
        path = self.record_path(step)
        return read_json(path) if path.is_file() else None

    def save_record(self, step: str, record: dict) -> None:
        if is_rank_zero():
            write_json(self.record_path(step), record)

    def require_record(self, step: str, needed_by: str) -> dict:
        record = self.record(step)
        if record is None:
            raise MissingStepError(
                f"{needed_by} needs step '{step}', which has not finished in {self.dir} "
                f"(no {self.record_path(step)}): run it first, e.g. with stage=all")
        return record
