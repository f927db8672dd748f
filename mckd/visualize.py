"""Pictures: class-id masks in a dataset's palette, overlays, and an experiment's qualitative grid and class mix.

`colorize` is the one place where class ids become colours; everything else here draws with it.
At the end of a pipeline run `write_pictures` leaves in the experiment directory:
    qualitative.png          image / ground truth / teacher / every stage's students / final, a few val images
    class_distribution.png   share of pixels per class: labeled ground truth vs each stage's pseudo-labels
    class_distribution.json  the pixel counts behind it (also a cache: a finished stage's counts never change)
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from mckd.data.source import IGNORE_INDEX
from mckd.modules.predictor import Predictor
from mckd.pipeline.atomic import atomic_write, png_bytes, read_json, write_json
from mckd.pipeline.experiment import Experiment, student_names
from mckd.progress import progress

log = logging.getLogger("mckd")

IGNORE_COLOUR = (0, 0, 0)
GRID_IMAGES = 4


# -- masks as pictures ---------------------------------------------------------------------------
def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """HxW class ids as an HxWx3 uint8 image in `palette`; ignore (255) and ids past the palette are black."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut = np.zeros((max(256, len(palette) + 1), 3), dtype=np.uint8)
    lut[: len(palette)] = palette
    if len(palette) <= IGNORE_INDEX:
        lut[IGNORE_INDEX] = IGNORE_COLOUR
    ids = np.asarray(label).astype(np.int64)
    return lut[np.clip(ids, 0, len(lut) - 1)]


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The colour mask blended over the image (`alpha`: the mask's weight); ignored pixels keep the image."""
    colours = colorize(label, palette).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    keep = np.asarray(label) == IGNORE_INDEX if len(palette) <= IGNORE_INDEX else np.zeros(label.shape, bool)
    blended[keep] = image[keep]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def save_png(path: str | Path, array: np.ndarray) -> None:
    """An array as a PNG, written atomically (class ids: uint8, or uint16 past 255 classes)."""
    data = png_bytes(array)
    atomic_write(path, lambda f: f.write(data))


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def _pyplot():
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # a notebook has imported it with its own backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def legend_handles(class_names: Sequence[str], palette: np.ndarray) -> list:
    from matplotlib.patches import Patch

    return [Patch(facecolor=np.asarray(c) / 255, edgecolor="0.4", label=n) for n, c in zip(class_names, palette)]


# -- the qualitative grid ------------------------------------------------------------------------
def model_steps(cfg: DictConfig, exp: Experiment) -> list[tuple[str, str, dict]]:
    """(step, checkpoint path, record) of every finished model, in pipeline order."""
    names = ["teacher"]
    for k in range(1, cfg.num_stages):
        names += student_names(k, cfg.num_partitions)
    names.append("final")
    out = []
    for name in names:
        record = exp.record(name)
        if record is not None:
            out.append((name, os.path.join(exp.dir, record["checkpoint"]), record))
    return out


def grid_figure(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], row_labels: Sequence[str],
                class_names: Sequence[str], palette: np.ndarray):
    """A figure of `rows` x `titles` pictures (HxWx3 uint8) with a class legend underneath."""
    plt = _pyplot()
    n_rows, n_cols = len(rows), len(titles)
    h, w = rows[0][0].shape[:2]
    cell = 2.2
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows * h / w + 1.2), squeeze=False,
                             layout="constrained")
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            ax = axes[r][c]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7)
    fig.legend(handles=legend_handles(class_names, palette), loc="outside lower center",
               ncol=min(len(class_names), 8), fontsize=7, frameon=False)
    return fig


def write_qualitative(cfg: DictConfig, exp: Experiment, dm, path: Path, num_images: int = GRID_IMAGES,
                      device: str = "auto") -> Path | None:
    """image / ground truth / each model's prediction for the first `num_images` validation images."""
    samples = dm.splits.val[:num_images]
    models = model_steps(cfg, exp)
    if not samples or not models:
        return None
    source, palette = dm.source, dm.source.palette
    data = [source.read(s) for s in samples]
    rows = [[image, colorize(mask, palette)] for image, mask in data]
    titles = ["image", "ground truth"]
    for name, checkpoint, record in progress(models, desc="qualitative grid", unit="model"):
        predictor = Predictor.from_checkpoint(checkpoint, transform=dm.eval_augmentation(), device=device)
        for row, (image, _) in zip(rows, data):
            row.append(colorize(predictor(image), palette))
        miou = record.get("val_miou")
        titles.append(name if miou is None else f"{name}\nval mIoU {miou:.3f}")
        del predictor
    fig = grid_figure(rows, titles, [s.id for s in samples], source.class_names, palette)
    fig.suptitle(f"{exp.dir.name}: validation predictions per model", fontsize=9)
    _save_figure(fig, path)
    return path


# -- the class distribution ----------------------------------------------------------------------
def class_counts(labels, num_classes: int) -> list[int]:
    """Pixels per class over an iterable of HxW label arrays (ignore and out-of-range ids not counted)."""
    total = np.zeros(num_classes, dtype=np.int64)
    for label in labels:
        ids = np.asarray(label).ravel()
        total += np.bincount(ids[ids < num_classes], minlength=num_classes)[:num_classes]
    return total.tolist()


def class_distribution(cfg: DictConfig, exp: Experiment, dm, cache: Path | None = None) -> dict:
    """Pixel counts per class: labeled ground truth, unlabeled ground truth (where known), each stage's labels.

    Counts in `cache` are reused: a stage's labels never change once its manifest is written.
    """
    source, splits, n = dm.source, dm.splits, dm.num_classes
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


def distribution_figure(distribution: dict, title: str):
    """Grouped bars: the share of pixels of each class, one bar per series."""
    plt = _pyplot()
    classes, series = distribution["classes"], distribution["series"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(classes) * max(1, len(series)) / 2 + 2), 3.8))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(classes))
    for i, (name, counts) in enumerate(series.items()):
        counts = np.asarray(counts, dtype=np.float64)
        share = counts / counts.sum() if counts.sum() else counts
        ax.bar(x + (i - (len(series) - 1) / 2) * width, share, width, label=name)
    ax.set_xticks(x, classes, rotation=45 if len(classes) > 8 else 0, ha="right" if len(classes) > 8 else "center",
                  fontsize=8)
    ax.set_ylabel("share of pixels")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_class_distribution(cfg: DictConfig, exp: Experiment, dm, path: Path) -> Path:
    distribution = class_distribution(cfg, exp, dm, cache=path.with_suffix(".json"))
    fig = distribution_figure(distribution, f"{exp.dir.name}: class distribution, labeled vs pseudo-labeled pixels")
    _save_figure(fig, path)
    return path


def write_pictures(cfg: DictConfig, exp: Experiment, dm) -> dict[str, Path]:
    """qualitative.png and class_distribution.png (+ .json) in the experiment directory; rank zero only.

    Pictures are a report, not a result: one that fails is logged and the others are still drawn.
    """
    settings = dict(cfg.get("pictures") or {})
    if settings.get("enabled", True) is False:
        return {}
    device = "cpu" if str(cfg.trainer.get("accelerator", "cpu")) == "cpu" else "auto"
    jobs = {
        "qualitative": lambda: write_qualitative(cfg, exp, dm, exp.dir / "qualitative.png",
                                                 int(settings.get("num_images", GRID_IMAGES)), device),
        "class_distribution": lambda: write_class_distribution(cfg, exp, dm, exp.dir / "class_distribution.png"),
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
