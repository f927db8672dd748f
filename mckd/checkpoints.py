"""What `checkpoint=PATH` means to mckd-eval and mckd-predict, and the dataset config that goes with it.

PATH is a `.ckpt` file, read alone wherever it lies, or an experiment directory (meaning its `final` student, or
the model `step=` names, as the step's record names it). A checkpoint carries the dataset config it was trained
on (its DataModule's hyperparameters, mckd/data/datamodule.py), which is used unless the command line chooses
another (`dataset=NAME`); `dataset.KEY=VALUE` changes one key of whichever is used.

Every checkpoint is read as weights only (`read_checkpoint`): loading a file never runs code from it.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mckd import layout
from mckd.atomic import read_json
from mckd.errors import MckdError
from mckd.records import ModelRecord


class CheckpointError(MckdError, FileNotFoundError):
    """`checkpoint=` names nothing usable: the message says what was found and what to pass instead."""


class NotACheckpointError(CheckpointError):
    """A file that is not a checkpoint written by mckd-train, or one that would run code when loaded."""


class ClassCountError(MckdError, ValueError):
    """A model whose number of classes differs from the dataset's it is asked to run on."""


# what an mckd checkpoint holds besides `state_dict`: SegmentationModule's saved hyperparameters
MODEL_HPARAMS = ("model", "num_classes", "class_names")
# where Lightning keeps the DataModule's (LightningDataModule.CHECKPOINT_HYPER_PARAMS_KEY): the dataset config, the
# palette and the step's data settings (mckd/data/datamodule.py)
DATAMODULE_HPARAMS = "datamodule_hyper_parameters"


def not_a_checkpoint(path: str | Path, reason: str) -> NotACheckpointError:
    return NotACheckpointError(f"{path} is not an mckd checkpoint: {reason} (expected a .ckpt written by mckd-train)")


def load_failure(err: Exception) -> str:
    """Why torch.load (weights only) refused a file, in one line."""
    message = str(err)
    if blocked := re.search(r"GLOBAL ([\w.]+)", message):
        return f"loading it would call {blocked.group(1)}, which no checkpoint needs: refused, nothing from it ran"
    if isinstance(err, EOFError):
        return "the file is empty or cut short"
    if isinstance(err, (pickle.UnpicklingError, KeyError)):  # torch's advice to load it unsafely; a bad opcode
        return "not a PyTorch file, or a damaged one"
    return f"not readable ({type(err).__name__}{': ' + first_sentence(message) if message.strip() else ''})"


def first_sentence(text: str) -> str:
    """The start of an error message, for a one-line report."""
    return text.strip().splitlines()[0].split(". ")[0][:160]


def is_mckd_checkpoint(contents: object) -> bool:
    hparams = contents.get("hyper_parameters") if isinstance(contents, dict) else None
    return (isinstance(contents, dict) and isinstance(contents.get("state_dict"), dict)
            and isinstance(hparams, dict) and all(key in hparams for key in MODEL_HPARAMS))


def read_checkpoint(path: str | Path) -> dict:
    """The contents of an mckd checkpoint, loaded as weights only; NotACheckpointError for any other file.

    mckd's checkpoints hold only tensors and plain Python values (its hyperparameters are plain containers),
    so nothing needs allow-listing with torch.serialization.add_safe_globals.
    """
    import torch

    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    except Exception as err:  # whatever a file of arbitrary bytes makes the unpickler raise
        raise not_a_checkpoint(path, load_failure(err)) from None
    if not is_mckd_checkpoint(contents):
        raise not_a_checkpoint(path, "it loads, but holds no mckd model: no state_dict, or no hyper_parameters "
                                     f"with {', '.join(MODEL_HPARAMS)}")
    return contents


def saved_dataset(contents: Mapping) -> dict | None:
    """The dataset config a checkpoint's model was trained on: its DataModule's; in a checkpoint written before
    the DataModule kept it, its module's; None in one older still."""
    data = contents.get(DATAMODULE_HPARAMS) or {}
    return data.get("dataset") or contents["hyper_parameters"].get("dataset")


def saved_palette(contents: Mapping) -> list | None:
    """The dataset's colours, as the checkpoint's DataModule saved them (None in older checkpoints)."""
    return (contents.get(DATAMODULE_HPARAMS) or {}).get("palette")


def require_same_classes(checkpoint: str | Path, checkpoint_classes: int, dataset: str, dataset_classes: int) -> None:
    """Refuse to run a model on a dataset with another number of classes, before anything runs."""
    if checkpoint_classes != dataset_classes:
        raise ClassCountError(f"checkpoint {checkpoint} predicts {checkpoint_classes} classes, but dataset {dataset} "
                              f"has {dataset_classes}: use the dataset it was trained on (dataset=NAME) "
                              "or a checkpoint trained on this one")


@dataclass(frozen=True)
class ModelRef:
    """A checkpoint file, and the experiment directory and step that named it (None for a .ckpt given alone)."""

    checkpoint: Path
    experiment: Path | None = None
    step: str | None = None

    @property
    def label(self) -> str:
        return self.step or self.checkpoint.stem


def is_experiment(path: Path) -> bool:
    return (path / layout.CONFIG).is_file() or (path / layout.RECORDS).is_dir()


def require(cfg: DictConfig, *keys: str) -> None:
    """A CheckpointError naming the first of `keys` left unset (`???`) on the command line."""
    for key in keys:
        if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
            raise CheckpointError(f"{key} is not set: pass {key}=PATH")


def resolve_model(path: str | None, step: str = layout.FINAL) -> ModelRef:
    """The checkpoint that `checkpoint=path` (and `step=`) means; CheckpointError says why there is none."""
    if not path:
        raise CheckpointError("checkpoint is not set: pass checkpoint=PATH (a .ckpt file or an experiment directory)")
    p = Path(path).expanduser()
    if p.is_dir():
        if not is_experiment(p):
            raise CheckpointError(f"checkpoint={path}: a directory, but not an experiment directory "
                                  f"(no {layout.CONFIG} or {layout.RECORDS}/): pass a .ckpt file or an mckd-train output directory")
        record_path = layout.record_path(p, step)
        if not record_path.is_file():
            done = layout.finished_model_steps(p)
            raise CheckpointError(f"checkpoint={path}: step '{step}' has not finished in this experiment (no {record_path}); "
                                  f"finished models: {', '.join(done) or 'none'} (choose one with step=NAME)")
        checkpoint = (p / ModelRecord.from_json(read_json(record_path)).checkpoint).resolve()
        if not checkpoint.is_file():
            raise CheckpointError(f"checkpoint={path}: step '{step}' names {checkpoint}, which does not exist")
        return ModelRef(checkpoint, p.resolve(), step)
    if not p.is_file():
        raise CheckpointError(f"checkpoint={path}: no such file or directory")
    return ModelRef(p.resolve())


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def dataset_chosen(overrides: Sequence[str]) -> bool:
    """Whether the command line chose a dataset config (`dataset=NAME`)."""
    return any(_override_key(o) == "dataset" for o in overrides)


def dataset_config(cfg: DictConfig, overrides: Sequence[str], saved: Mapping | None,
                   checkpoint: str | Path | None = None, required: bool = True) -> DictConfig | None:
    """The dataset config a command uses: `dataset=NAME` if given, else the one the checkpoint was trained on
    (`saved`: `saved_dataset`), with each `dataset.KEY=VALUE` of the command line applied (typed and checked by
    the schema's DatasetConfig as it composed). None without either when not `required`."""
    if dataset_chosen(overrides):
        return cfg.dataset
    if not saved:
        if not required:
            return None
        raise CheckpointError(f"checkpoint {checkpoint} does not carry the dataset config it was trained on (an older "
                              "mckd wrote it), so its dataset is unknown: pass dataset=NAME (synthetic, cityscapes, "
                              "coco, camvid, folder ...)")
    dataset = OmegaConf.create(dict(saved))
    for override in overrides:
        key = _override_key(override)
        if key.startswith("dataset.") and not override.startswith("~"):
            OmegaConf.update(dataset, key[len("dataset."):], OmegaConf.select(cfg, key), force_add=True)
    return dataset
