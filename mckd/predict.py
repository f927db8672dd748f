"""mckd-predict: a checkpoint on a folder of images (or one image), any sizes, written as masks and overlays.

Under `output=DIR`, per input image `NAME.ext`:
    labels/NAME.png    class ids (uint8; uint16 past 255 classes), at the image's own size
    color/NAME.png     the class ids in the dataset's palette
    overlay/NAME.png   the colour mask blended over the image (`alpha=`)
and predictions.json: the checkpoint, classes, palette, every image written and every image that failed.
An image that cannot be read is reported by name and skipped; `strict=true` stops at it instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from mckd.atomic import write_json
from mckd.checkpoints import (
    dataset_chosen,
    dataset_config,
    read_checkpoint,
    require,
    require_same_classes,
    resolve_model,
    saved_dataset,
    saved_palette,
)
from mckd.data.folder import IMAGE_SUFFIXES, list_images
from mckd.data.registry import build_source, source_class
from mckd.data.source import DatasetError, SegmentationSource, default_palette, read_rgb
from mckd.data.transforms import eval_transform
from mckd.errors import MckdError
from mckd.modules import SegmentationModule
from mckd.modules.predictor import Predictor
from mckd.pipeline.store import label_dtype
from mckd.progress import progress
from mckd.visualize import colorize, overlay, save_png

log = logging.getLogger("mckd")
OUTPUTS = ("labels", "color", "overlay")


class PredictError(MckdError, ValueError):
    """Bad mckd-predict input, or (with strict=true) an image that cannot be read."""


def input_images(path: str) -> list[Path]:
    """The image files `input=` names: one file, or the images directly inside a directory (sorted)."""
    if not path:
        raise PredictError("input is not set: pass input=DIR or input=IMAGE")
    p = Path(path).expanduser()
    if p.is_dir():
        images = list_images(p)
        if not images:
            raise PredictError(f"input={path}: no images ({' '.join(IMAGE_SUFFIXES)}) in this directory")
        return images
    if p.is_file():
        return [p]
    raise PredictError(f"input={path}: no such file or directory")


def output_names(images: Sequence[Path]) -> list[str]:
    """A file name per image: its stem, or stem_ext where two images share a stem (a.png, a.jpg)."""
    stems = [p.stem for p in images]
    return [f"{p.stem}_{p.suffix.lstrip('.').lower()}" if stems.count(p.stem) > 1 else p.stem for p in images]


def dataset_reader(dataset: DictConfig | None) -> SegmentationSource | None:
    """The dataset's reader; None without a dataset config or without the dataset's files on this machine."""
    if dataset is None:
        return None
    try:
        return build_source(dataset)
    except DatasetError:
        return None


def dataset_palette(dataset: DictConfig | None, num_classes: int, saved: Sequence | None = None) -> np.ndarray:
    """The dataset's colours; without its files on this machine, those the checkpoint `saved`, else its configured
    or built-in palette."""
    if (reader := dataset_reader(dataset)) is not None:
        return reader.palette
    if saved is not None:
        return np.asarray(saved, dtype=np.uint8)
    if dataset is None:
        return default_palette(num_classes)
    params = dataset.get("params") or {}
    if params.get("palette"):
        return np.asarray(OmegaConf.to_container(params.palette), dtype=np.uint8)
    try:
        builtin = source_class(dataset.get("kind")).builtin_palette
    except DatasetError:  # a kind this version does not know
        builtin = None
    return default_palette(num_classes) if builtin is None else builtin


def predict(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict:
    """Run `cfg.checkpoint` on `cfg.input`, write `cfg.output`; returns what predictions.json holds."""
    require(cfg, "checkpoint", "input", "output")
    ref = resolve_model(cfg.checkpoint, cfg.step)
    images = input_images(cfg.input)
    out = Path(cfg.output).expanduser()
    contents = read_checkpoint(ref.checkpoint)
    module = SegmentationModule.from_checkpoint(str(ref.checkpoint), contents=contents)
    dataset = dataset_config(cfg, overrides, saved_dataset(contents), ref.checkpoint, required=False)
    num_classes = module.hparams.num_classes
    if (reader := dataset_reader(dataset)) is not None:  # its classes are known
        require_same_classes(ref.checkpoint, num_classes, dataset.name, reader.num_classes)
    palette = dataset_palette(dataset, num_classes, None if dataset_chosen(overrides) else saved_palette(contents))
    eval_size = None if dataset is None or dataset.get("eval_size") is None else tuple(dataset.eval_size)
    predictor = Predictor(module, eval_transform(eval_size), flip=cfg.flip,
                          window=None if cfg.window is None else list(cfg.window),
                          stride=None if cfg.stride is None else list(cfg.stride), device=cfg.device)
    Image.MAX_IMAGE_PIXELS = None  # the user's own images, of any size
    dtype = label_dtype(num_classes)
    written, failed = [], []
    for path, name in progress(list(zip(images, output_names(images))), desc="predict", total=len(images)):
        try:
            image = read_rgb(path)
        except DatasetError as err:  # its message names the file
            if cfg.strict:
                raise PredictError(f"{err} (strict=true: stopped after {len(written)} of {len(images)} images)") from None
            log.error("error: %s; skipped it", err)
            failed.append({"input": str(path), "error": str(err)})
            continue
        label = predictor(image)
        files = {kind: out / kind / f"{name}.png" for kind in OUTPUTS}
        save_png(files["labels"], label.astype(dtype))
        save_png(files["color"], colorize(label, palette))
        save_png(files["overlay"], overlay(image, label, palette, cfg.alpha))
        written.append({"input": str(path), "size": list(image.shape[:2]),
                        **{kind: str(p.relative_to(out)) for kind, p in files.items()}})
    summary = {"checkpoint": str(ref.checkpoint), "step": ref.step or module.hparams.get("name"),
               "classes": list(module.class_names),
               "palette": np.asarray(palette).tolist(),
               "inference": {"flip": predictor.flip, "window": predictor.window, "stride": predictor.stride},
               "images": written, "failed": failed}
    write_json(out / "predictions.json", summary)
    log.info("wrote %d of %d images to %s (labels/, color/, overlay/, predictions.json)", len(written), len(images), out)
    if failed:
        log.warning("%d image(s) could not be read and were skipped: %s", len(failed),
                    ", ".join(f["input"] for f in failed))
    return summary
