"""Pictures: class-id masks in a dataset's palette, overlays, and the figures an experiment's report is made of.

`colorize` is the one place where class ids become colours; everything else draws with it. The experiment's own
pictures (which models, which labels) are drawn by mckd.pipeline.pictures with these pieces.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mckd.atomic import atomic_write, png_bytes
from mckd.data.source import IGNORE_INDEX

IGNORE_COLOUR = (0, 0, 0)


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


def save_figure(fig, path: Path) -> None:
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


# -- the class distribution ----------------------------------------------------------------------
def class_counts(labels, num_classes: int) -> list[int]:
    """Pixels per class over an iterable of HxW label arrays (ignore and out-of-range ids not counted)."""
    total = np.zeros(num_classes, dtype=np.int64)
    for label in labels:
        ids = np.asarray(label).ravel()
        total += np.bincount(ids[ids < num_classes], minlength=num_classes)[:num_classes]
    return total.tolist()


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


