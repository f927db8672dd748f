"""Weights & Biases for the pipeline (`logger=wandb`; the CSV logger is still written).

One W&B run per trained model (job_type = its step: teacher, stage1-a, ..., final) and one `pseudo-label`
run (pseudo-label mIoU per stage, the summary table of every model, the experiment's pictures), all in one
group named after the experiment. Model runs get the composed config, losses, learning rate, val mIoU and
per-class IoU (logged by the modules) and a few validation images with ground-truth and predicted masks.

Run ids are `<prefix>-<step>`, the prefix drawn once per experiment and kept in `<experiment>/wandb.json`,
so re-running an interrupted experiment resumes the same runs (resume="allow") and never new ones, while a
new experiment in a reused directory path does not append to an old one's runs (delete the directory, get a
new prefix). Without credentials the runs are written offline under `<experiment>/wandb/`.
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from PIL import Image

from mckd.atomic import read_json, write_json
from mckd.data.datamodule import SegmentationData
from mckd.data.source import IGNORE_INDEX
from mckd.layout import FINAL, PICTURES, TEACHER, WANDB, WANDB_IDS
from mckd.pipeline.experiment import Experiment, is_rank_zero
from mckd.pipeline.pictures import model_steps
from mckd.schema import plain

log = logging.getLogger("mckd")
PSEUDO_LABEL_JOB = "pseudo-label"
_announced: set[str] = set()


def has_credentials() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(configured: str | None, directory: Path) -> str:
    """`logger.wandb.mode`, else $WANDB_MODE, else online with credentials and offline without (said once)."""
    mode = configured or os.environ.get("WANDB_MODE")
    reason = f"WANDB_MODE={mode}" if mode and not configured else "logger.wandb.mode"
    if not mode:
        mode = "online" if has_credentials() else "offline"
        reason = "no credentials (WANDB_API_KEY or `wandb login`)"
    if mode in ("offline", "dryrun") and str(directory) not in _announced and is_rank_zero():
        _announced.add(str(directory))
        log.info("W&B: %s, so runs are saved offline in %s; upload them later with: wandb sync %s",
                 reason, directory / WANDB, directory / WANDB / "offline-run-*")
    return mode


def composed_config(cfg: DictConfig) -> dict:
    """The composed Hydra config, resolved where it can be (outside a Hydra app `${hydra:...}` cannot)."""
    try:
        return plain(cfg)
    except Exception:  # an unresolvable interpolation: log the config as written
        return plain(cfg, resolve=False)


class RunLogger(WandbLogger):
    """A WandbLogger for one step's run.

    Lightning's WandbLogger adopts whatever run is active; this one finishes the previous step's run first.
    The module's hyperparameters go under `module` so they never overwrite the composed config's keys.
    """

    @property
    @rank_zero_experiment
    def experiment(self):
        import wandb

        if self._experiment is None and wandb.run is not None and wandb.run.id != self._id:
            wandb.run.finish()
        return super().experiment

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        params = dict(params) if isinstance(params, Mapping) else vars(params)
        self.experiment.config.update({"module": _plain(params)}, allow_val_change=True)


def _plain(value: Any) -> Any:
    """Config values W&B can store: containers recursively, anything else that is not JSON as text."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _resize(array: np.ndarray, max_side: int, nearest: bool) -> np.ndarray:
    h, w = array.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return array
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(array).resize(size, resample))


class ValidationImages(Callback):
    """At every validation, a few fixed validation images with their ground-truth and predicted masks."""

    def __init__(self, data: SegmentationData, num_images: int = 4, max_side: int = 512, key: str = "val/examples"):
        self.data, self.num_images, self.max_side, self.key = data, num_images, max_side, key
        self._data: list | None = None

    def class_labels(self) -> dict[int, str]:
        labels = dict(enumerate(self.data.class_names))
        if len(labels) <= IGNORE_INDEX:
            labels[IGNORE_INDEX] = "ignore"
        return labels

    def images(self, module: L.LightningModule) -> list:
        import wandb

        from mckd.modules.predictor import Predictor

        if self._data is None:
            self._data = [(s.id, *self.data.source.read(s)) for s in self.data.splits.val[: self.num_images]]
        predictor = Predictor(module, self.data.eval_transform(), device=module.device)
        labels, out = self.class_labels(), []
        for sample_id, image, mask in self._data:
            pred = predictor(image).astype(np.uint8 if len(labels) <= 256 else np.int32)
            masks = {"prediction": {"mask_data": _resize(pred, self.max_side, True),
                                    "class_labels": labels}}
            if mask is not None:
                masks["ground_truth"] = {"mask_data": _resize(mask, self.max_side, True), "class_labels": labels}
            out.append(wandb.Image(_resize(image, self.max_side, False), masks=masks, caption=sample_id))
        return out

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.num_images <= 0:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not self.data.splits.val:
            return
        images = self.images(pl_module)
        for logger in loggers:
            logger.experiment.log({self.key: images, "trainer/global_step": trainer.global_step})


class WandbTracker:
    """The W&B side of one pipeline run: loggers and callbacks per step, and the pseudo-label run at the end."""

    def __init__(self, cfg: DictConfig, exp: Experiment, data: SegmentationData):
        self.cfg, self.exp, self.data = cfg, exp, data
        self.settings = dict(cfg.logger.wandb)
        self.ids = self._ids() if is_rank_zero() else {}
        self.group = self.settings.get("group") or self.ids.get("group") or exp.dir.name
        self.mode = resolve_mode(self.settings.get("mode"), exp.dir)
        self.config = composed_config(cfg)

    def _ids(self) -> dict:
        """`<experiment>/wandb.json`: the run-id prefix and group, made on first use and kept for resuming."""
        path = self.exp.dir / WANDB_IDS
        if not path.is_file():  # first use; processes starting together (pair members) agree on the first one
            draft = path.with_name(f".wandb.{os.getpid()}.json")
            write_json(draft, {"prefix": secrets.token_hex(4), "group": self.settings.get("group") or self.exp.dir.name})
            try:
                os.link(draft, path)  # atomic, and never replaces an existing file
            except FileExistsError:
                pass
            finally:
                draft.unlink()
        return read_json(path)

    def run_id(self, step: str) -> str | None:
        return f"{self.ids['prefix']}-{step}" if self.ids else None

    def init_args(self, step: str) -> dict:
        tags = [str(t) for t in self.settings.get("tags") or []]
        return {"project": self.settings.get("project"), "entity": self.settings.get("entity"),
                "group": self.group, "job_type": step, "name": f"{self.group}/{step}", "id": self.run_id(step),
                "resume": "allow", "mode": self.mode, "config": self.config,
                "tags": sorted({*tags, str(self.cfg.dataset.name)})}

    # -- the Pipeline's hooks -------------------------------------------------------------------
    def loggers(self, step: str) -> list:
        args = self.init_args(step)
        project = args.pop("project")
        return [RunLogger(save_dir=str(self.exp.dir), project=project, **args)]

    def callbacks(self, step: str) -> list:
        return [ValidationImages(self.data, int(self.settings.get("num_images", 4)),
                                 int(self.settings.get("image_size", 512)))]

    def finish(self, results: dict) -> None:
        """Close the last model's run; log the pseudo-label run: mIoU per stage, summary table, pictures."""
        import wandb

        if not is_rank_zero():
            return
        if wandb.run is not None:
            wandb.run.finish()
        run = wandb.init(dir=str(self.exp.dir), **self.init_args(PSEUDO_LABEL_JOB))
        try:
            run.define_metric("stage")
            run.define_metric("pseudo_label/*", step_metric="stage")
            for stage, miou in self.pseudo_label_mious(results):
                run.log({"stage": stage, "pseudo_label/miou": miou})
                run.summary[f"pseudo_label/stage{stage}_miou"] = miou
            columns, rows = self.summary_rows()
            run.log({"results": wandb.Table(columns=columns, data=rows)})
            for name in (TEACHER, FINAL):
                if (entry := results.get(name)) is not None:
                    run.summary[f"{name}/val_miou"] = entry["val_miou"]
            pictures = {f"pictures/{p.stem}": wandb.Image(str(p)) for p in
                        (self.exp.dir / n for n in PICTURES.values())
                        if p.is_file()}
            distribution = (self.exp.dir / PICTURES["class_distribution"]).with_suffix(".json")
            if distribution.is_file():
                data = read_json(distribution)
                pictures["class_distribution"] = wandb.Table(
                    columns=["class", *data["series"]],
                    data=[[c, *(counts[i] for counts in data["series"].values())] for i, c in enumerate(data["classes"])])
            if pictures:
                run.log(pictures)
        finally:
            run.finish()

    @staticmethod
    def pseudo_label_mious(results: dict) -> list[tuple[int, float]]:
        """(stage, pseudo-label mIoU) of every labeled stage with ground truth: 0 = the teacher's labels."""
        out = []
        teacher = results.get(TEACHER) or {}
        if teacher.get("pseudo_label_miou") is not None:
            out.append((0, teacher["pseudo_label_miou"]))
        out += [(s["stage"], s["pseudo_label_miou"]) for s in results.get("stages", [])
                if s.get("pseudo_label_miou") is not None]
        return out

    def summary_rows(self) -> tuple[list[str], list[list]]:
        """One row per finished model: val/test mIoU (best.ckpt's, and the last epoch's val mIoU), the mIoU of the
        pseudo-labels it made, time, per-class IoU."""
        classes = self.data.class_names
        columns = ["step", "stage", "val_miou", "last_val_miou", "test_miou", "pseudo_label_miou", "wall_time_s",
                   *(f"iou/{c}" for c in classes)]
        rows = []
        for name, _, record in model_steps(self.cfg, self.exp):
            stage = 0 if name == TEACHER else self.cfg.num_stages if name == FINAL else int(record.stage or 0)
            labels = None if name == FINAL else self.exp.label_record(stage)
            per_class = record.per_class_iou or {}
            rows.append([name, stage, record.val_miou, record.last_val_miou, record.test_miou,
                         None if labels is None else labels.pseudo_label_miou, record.wall_time_s,
                         *(per_class.get(c) for c in classes)])
        return columns, rows
