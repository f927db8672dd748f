"""mckd-predict on a folder of images of different sizes, with a corrupt one among them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image

from mckd.data.cityscapes import PALETTE
from mckd.data.source import default_palette
from mckd.data.synthetic import CLASS_NAMES, render_scene
from mckd.predict import PredictError, dataset_palette, predict

SIZES = {"a.png": (70, 130), "b.jpg": (200, 90), "c.bmp": (33, 47)}


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        image = Image.fromarray(render_scene(i, h, w)[0])
        (image.convert("L") if name.endswith(".bmp") else image).save(folder / name)  # grayscale is read as RGB
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really a PNG")
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


def test_writes_masks_colours_and_overlays_and_reports_corrupt_images(smoke_experiment, mckd_cli, image_dir,
                                                                       tmp_path) -> None:
    out = tmp_path / "out"
    proc = mckd_cli("mckd-predict", f"checkpoint={smoke_experiment}", f"input={image_dir}", f"output={out}")
    assert "broken.png" in proc.stderr and "cannot read image" in proc.stderr
    for name, (h, w) in SIZES.items():
        stem = Path(name).stem
        labels = np.asarray(Image.open(out / "labels" / f"{stem}.png"))
        assert labels.shape == (h, w) and labels.max() < len(CLASS_NAMES)
        for kind in ("color", "overlay"):
            assert np.asarray(Image.open(out / kind / f"{stem}.png")).shape == (h, w, 3)
    summary = json.loads((out / "predictions.json").read_text())
    assert [Path(i["input"]).name for i in summary["images"]] == ["a.png", "b.jpg", "c.bmp"]
    assert [Path(f["input"]).name for f in summary["failed"]] == ["broken.png"]
    assert summary["classes"] == list(CLASS_NAMES) and len(summary["palette"]) == len(CLASS_NAMES)
    assert not (out / "labels" / "broken.png").exists()


def predict_config(*overrides: str):
    with initialize_config_module("mckd.conf", version_base="1.3"):
        return compose("predict", overrides=list(overrides))


def test_strict_stops_at_the_corrupt_image(smoke_experiment, image_dir, tmp_path) -> None:
    overrides = [f"checkpoint={smoke_experiment}", f"input={image_dir}", f"output={tmp_path / 'out'}", "strict=true",
                 "device=cpu"]
    with pytest.raises(PredictError, match=r"broken\.png.*strict=true"):
        predict(predict_config(*overrides), overrides)
    assert (tmp_path / "out" / "labels" / "a.png").is_file()  # images before it were written
    assert not (tmp_path / "out" / "labels" / "c.png").exists()  # and none after it


def test_one_image_and_a_bare_checkpoint(smoke_experiment, image_dir, tmp_path) -> None:
    checkpoint = smoke_experiment / "checkpoints" / "teacher" / "best.ckpt"
    overrides = [f"checkpoint={checkpoint}", f"input={image_dir / 'b.jpg'}", f"output={tmp_path / 'one'}",
                 "device=cpu", "flip=true"]
    summary = predict(predict_config(*overrides), overrides)
    assert [Path(i["input"]).name for i in summary["images"]] == ["b.jpg"] and summary["step"] == "teacher"
    assert summary["inference"]["flip"] is True
    assert np.asarray(Image.open(tmp_path / "one" / "labels" / "b.png")).shape == SIZES["b.jpg"]


@pytest.mark.parametrize("kind, params, expected", [
    ("cityscapes", {}, PALETTE),  # the reader's built-in colours
    ("folder", {"palette": [[1, 2, 3], [4, 5, 6]]}, [[1, 2, 3], [4, 5, 6]]),  # the configured ones
    ("folder", {}, default_palette(2)),
    ("not-a-kind", {}, default_palette(2)),
])
def test_palette_without_the_dataset_files(tmp_path: Path, kind, params, expected):
    folder_keys = {"class_names": ["a", "b"], "splits": {"train": ["images", "masks"]}} if kind == "folder" else {}
    cfg = OmegaConf.create({"kind": kind, "params": {"root": str(tmp_path / "absent"), **folder_keys, **params}})
    assert np.array_equal(dataset_palette(cfg, 2), np.asarray(expected, dtype=np.uint8))
