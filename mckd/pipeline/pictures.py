"""The pictures `write_pictures` leaves in an experiment directory at the end of a run (names: mckd.layout):
    qualitative.png          image / ground truth / teacher / every stage's students / final, a few val images
    class_distribution.png   share of pixels per class: labeled ground truth vs each stage's pseudo-labels
    class_distribution.json  the pixel counts behind it (also a cache: a finished stage's counts never change)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from mckd import layout
from mckd.atomic import read_json, write_json
from mckd.data.datamodule import SegmentationData
from mckd.modules.predictor import Predictor
from mckd.pipeline.experiment import Experiment
from mckd.progress import progress
from mckd.records import ModelRecord
from mckd.visualize import class_counts, colorize, distribution_figure, grid_figure, save_figure

log = logging.getLogger("mckd")

GRID_IMAGES = 4


def model_steps(cfg: DictConfig, exp: Experiment) -> list[tuple[str, str, ModelRecord]]:
    """(step, checkpoint path, record) of every finished model, in pipeline order."""
    out = []
    for name in layout.model_steps(cfg.num_stages, cfg.num_partitions):
        record = exp.model_record(name)
        if record is not None:
            out.append((name, os.path.join(exp.dir, record.checkpoint), record))
    return out


def write_qualitative(cfg: DictConfig, exp: Experiment, data: SegmentationData, path: Path,
                      num_images: int = GRID_IMAGES, device: str = "auto") -> Path | None:
    """image / ground truth / each model's prediction for the first `num_images` validation images."""
    samples = data.splits.val[:num_images]
    models = model_steps(cfg, exp)
    if not samples or not models:
        return None
    source, palette = data.source, data.source.palette
    images = [source.read(s) for s in samples]
    rows = [[image, colorize(mask, palette)] for image, mask in images]
    titles = ["image", "ground truth"]
    for name, checkpoint, record in progress(models, desc="qualitative grid", unit="model"):
        predictor = Predictor.from_checkpoint(checkpoint, transform=data.eval_transform(), device=device)
        for row, (image, _) in zip(rows, images):
            row.append(colorize(predictor(image), palette))
        miou = record.val_miou
        titles.append(name if miou is None else f"{name}\nval mIoU {miou:.3f}")
        del predictor
    fig = grid_figure(rows, titles, [s.id for s in samples], source.class_names, palette)
    fig.suptitle(f"{exp.dir.name}: validation predictions per model", fontsize=9)
    save_figure(fig, path)
    return path


def class_distribution(cfg: DictConfig, exp: Experiment, data: SegmentationData, cache: Path | None = None) -> dict:
    """Pixel counts per class: labeled ground truth, unlabeled ground truth (where known), each stage's labels.

    Counts in `cache` are reused: a stage's labels never change once its manifest is written.
    """
    source, splits, n = data.source, data.splits, data.num_classes
    old = read_json(cache) if cache is not None and cache.is_file() else {}
    if old.get("classes") != list(source.class_names):
        old = {}
    out = {"classes": list(source.class_names), "series": {}}
    cached = old.get("series", {})

    def counted(key: str, compute) -> None:
        out["series"][key] = cached[key] if key in cached else compute()

    counted("labeled (ground truth)", lambda: class_counts(
        (source.read_mask(s) for s in progress(splits.labeled, desc="class counts: labeled")), n))
    with_masks = [s for s in splits.unlabeled if s.mask is not None]
    if with_masks:
        counted("unlabeled (ground truth)", lambda: class_counts(
            (source.read_mask(s) for s in progress(with_masks, desc="class counts: unlabeled")), n))
    for k in range(cfg.num_stages):
        manifest = exp.store.manifest(k)
        if manifest is None:
            continue
        reader = exp.store.reader(k)
        ids = [i for part in manifest["partitions"] for i in part["ids"]]
        counted(f"stage {k} pseudo-labels", lambda reader=reader, ids=ids, k=k: class_counts(
            (reader.read(i)["label"] for i in progress(ids, desc=f"class counts: stage {k}")), n))
    if cache is not None:
        write_json(cache, out)
    return out


def write_class_distribution(cfg: DictConfig, exp: Experiment, data: SegmentationData, path: Path) -> Path:
    distribution = class_distribution(cfg, exp, data, cache=path.with_suffix(".json"))
    fig = distribution_figure(distribution, f"{exp.dir.name}: class distribution, labeled vs pseudo-labeled pixels")
    save_figure(fig, path)
    return path


def write_pictures(cfg: DictConfig, exp: Experiment, data: SegmentationData) -> dict[str, Path]:
    """qualitative.png and class_distribution.png (+ .json) in the experiment directory; rank zero only.

    Pictures are a report, not a result: one that fails is logged and the others are still drawn.
    """
    settings = dict(cfg.get("pictures") or {})  # an experiment's saved config from before pictures was declared
    if settings.get("enabled", True) is False:
        return {}
    device = "cpu" if str(cfg.trainer.get("accelerator", "cpu")) == "cpu" else "auto"
    jobs = {
        "qualitative": lambda: write_qualitative(cfg, exp, data, exp.dir / layout.PICTURES["qualitative"],
                                                 int(settings.get("num_images", GRID_IMAGES)), device),
        "class_distribution": lambda: write_class_distribution(cfg, exp, data,
                                                               exp.dir / layout.PICTURES["class_distribution"]),
    }
    written = {}
    for name, job in jobs.items():
        try:
            path = job()
        except Exception:
            log.exception("pictures: could not draw %s", name)
            continue
        if path is not None:
            written[name] = path
            log.info("pictures: wrote %s", path)
    return written

