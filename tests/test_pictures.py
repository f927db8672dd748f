"""The pictures a pipeline run leaves in its experiment directory, and the palette colouring they share."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fixtures import experiment_dataset
from PIL import Image

from mckd.data.source import default_palette
from mckd.data.synthetic import CLASS_NAMES
from mckd.visualize import colorize, overlay


def test_experiment_pictures(smoke_experiment: Path) -> None:
    for name in ("stages.png", "qualitative.png", "class_distribution.png"):
        with Image.open(smoke_experiment / name) as img:
            assert img.format == "PNG" and min(img.size) > 100
    counts = json.loads((smoke_experiment / "class_distribution.json").read_text())
    assert counts["classes"] == list(CLASS_NAMES)
    series = counts["series"]
    assert list(series) == ["labeled (ground truth)", "unlabeled (ground truth)", "stage 0 pseudo-labels",
                            "stage 1 pseudo-labels"]
    dataset = experiment_dataset(smoke_experiment)  # debug=smoke: max_labeled and max_unlabeled images
    pixels = dataset.params.height * dataset.params.width
    assert sum(series["labeled (ground truth)"]) == dataset.split.max_labeled * pixels  # synthetic: no ignore
    assert sum(series["stage 0 pseudo-labels"]) == sum(series["stage 1 pseudo-labels"]) == \
        dataset.split.max_unlabeled * pixels


def test_colorize_and_overlay() -> None:
    palette = default_palette(3)
    label = np.array([[0, 1], [2, 255]])
    colours = colorize(label, palette)
    assert colours.shape == (2, 2, 3) and (colours[0, 1] == palette[1]).all() and (colours[1, 1] == 0).all()
    image = np.full((2, 2, 3), 200, np.uint8)
    blended = overlay(image, label, palette, alpha=0.5)
    assert (blended[1, 1] == 200).all(), "ignored pixels keep the image"
    assert (blended[0, 1] == np.rint(0.5 * 200 + 0.5 * palette[1])).all()
