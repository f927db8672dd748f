"""What a step's record (`steps/<step>.json`, see mckd.layout) holds: one dataclass per kind of step, the one
place that names a record's keys. A step is finished exactly when its record exists."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class ModelRecord:
    """A trained (or loaded) model: its val/test mIoU (best.ckpt, selected on val) and its last epoch's."""

    name: str
    val_miou: float | None
    test_miou: float | None
    per_class_iou: dict[str, float | None]
    checkpoint: str                      # relative to the experiment directory; absolute for a loaded teacher
    wall_time_s: float
    last_val_miou: float | None = None
    last_test_miou: float | None = None
    trained_on: str | int | None = None  # "labeled", "all", "loaded", or the pair member's partition index
    stage: int | None = None             # pair students only

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelRecord:
        return cls(**_known(cls, data))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LabelRecord:
    """A stage's pseudo-labels, scored against the unlabeled split's ground truth where it has some."""

    name: str
    stage: int
    pseudo_label_miou: float | None
    pseudo_label_per_class_iou: dict[str, float | None] | None
    wall_time_s: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelRecord:
        return cls(**_known(cls, data))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """`data` without keys `cls` does not declare (a record written by a later mckd)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}
