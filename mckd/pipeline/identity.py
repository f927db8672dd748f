"""An experiment's identity: the settings that decide its results, stored at its first run and checked on resume.

Re-running an experiment directory with other values would mix two experiments in one directory (a K=3
experiment resumed without `num_stages=3` would silently finish as K=2), so a run whose identity differs
from the stored one stops, naming every differing key, unless `resume_mismatch=allow`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mckd import layout
from mckd.atomic import read_json, write_json
from mckd.errors import MckdError
from mckd.records import ModelRecord
from mckd.schema import plain

log = logging.getLogger("mckd")

# The config keys that define an experiment. Nodes count whole, so a key added to one of them later is part
# of the identity without being listed here.
IDENTITY_KEYS = (
    "dataset", "teacher", "student", "num_stages", "num_partitions", "repartition", "partition_group", "seed",
    "loss", "student_loss", "pseudo", "student_aug", "train", "optim", "labeled_weight", "labeled_fraction",
    "warm_start",
)
# Keys inside those nodes that change how fast results come, not what they are; the teacher checkpoint is checked
# against the teacher's record instead (`teacher_source`), so that later steps need not repeat it.
NOT_IDENTITY = ("dataset.num_workers", "dataset.eval_batch_size", "teacher.checkpoint")
TEACHER_CHECKPOINT = "teacher_checkpoint"
DEPRECATED_TEACHER_CHECKPOINT = "teacher.checkpoint"  # the old spelling, accepted until the next release
NOT_SET = "(not set)"
_ABSENT = object()


class ResumeMismatchError(MckdError, ValueError):
    """A run's settings differ from those its experiment directory was started with."""


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {dotted.key: leaf}; lists stay whole values."""
    if not isinstance(value, Mapping):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The identity keys of `cfg`, resolved and flattened."""
    values = {key: plain(node) for key in IDENTITY_KEYS
              if (node := OmegaConf.select(cfg, key, default=_ABSENT)) is not _ABSENT}
    return {k: v for k, v in flatten(values).items() if k not in NOT_IDENTITY}


def teacher_checkpoint(cfg: DictConfig) -> tuple[str, str | None]:
    """(the key the user set, its value) of the trained teacher to load: `teacher_checkpoint`, or its deprecated
    spelling `teacher.checkpoint` (a pipeline setting inside the teacher's model node); (key, None) when neither."""
    new = OmegaConf.select(cfg, TEACHER_CHECKPOINT)
    old = OmegaConf.select(cfg, DEPRECATED_TEACHER_CHECKPOINT)
    if old and not new:
        return DEPRECATED_TEACHER_CHECKPOINT, str(old)
    return TEACHER_CHECKPOINT, None if new is None else str(new)


def identity_path(directory: str | Path) -> Path:
    return Path(directory) / layout.IDENTITY


def teacher_source(directory: str | Path) -> str | None:
    """Where the experiment's recorded teacher came from: a checkpoint file, 'trained here', or None (no record)."""
    record_file = layout.record_path(directory, layout.TEACHER)
    if not record_file.is_file():
        return None
    record = ModelRecord.from_json(read_json(record_file))
    return str(Path(record.checkpoint).resolve()) if record.trained_on == "loaded" else "trained here"


def differences(cfg: DictConfig, directory: str | Path) -> list[tuple[str, Any, Any]]:
    """(key, stored value, value now) for every identity key that differs from the experiment's stored identity."""
    found = []
    path = identity_path(directory)
    if path.is_file():
        stored, now = read_json(path), identity(cfg)
        # a key added to the code since (or dropped) whose value is null means what its absence meant
        found = [(key, stored.get(key, NOT_SET), now.get(key, NOT_SET)) for key in sorted(stored.keys() | now.keys())
                 if stored.get(key) != now.get(key)]
    key, checkpoint = teacher_checkpoint(cfg)
    source = teacher_source(directory)
    if checkpoint and source is not None and source != str(Path(checkpoint).resolve()):
        found.append((key, source, checkpoint))
    return found


def describe(found: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{key}={stored!r} there, {now!r} now" for key, stored, now in found)


def check_identity(cfg: DictConfig, directory: str | Path, warn: bool = True) -> None:
    """Stop when `cfg` differs from the experiment's stored identity, unless resume_mismatch=allow (then warn)."""
    found = differences(cfg, directory)
    if not found:
        return
    if cfg.get("resume_mismatch") == "allow":
        if warn:
            log.warning("resume_mismatch=allow: continuing %s although %s (the stored %s is kept; a recorded teacher "
                        "is kept too)", directory, describe(found), layout.IDENTITY)
        return
    raise ResumeMismatchError(
        f"experiment {directory} was started with other settings ({layout.IDENTITY}, {layout.RECORDS}/{layout.TEACHER}.json): "
        f"{describe(found)}. "
        "Re-run with its values, choose a new experiment directory, or pass resume_mismatch=allow")


def record_identity(cfg: DictConfig, directory: str | Path) -> None:
    """Store the identity at an experiment's first run; later runs leave it as it is."""
    path = identity_path(directory)
    if not path.is_file():
        write_json(path, identity(cfg))
