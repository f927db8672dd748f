"""COCO 2017 as 81-class semantic masks: a one-off prepare step (`mckd-prepare-coco`) and the reader."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from mckd.atomic import atomic_write
from mckd.data.source import (
    IGNORE_INDEX,
    DatasetError,
    Sample,
    SegmentationSource,
    require_dir,
    require_images,
)
from mckd.errors import MckdError
from mckd.progress import progress

CLASS_NAMES = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
COCO_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
_CLASS_INDEX = {cat_id: index for index, cat_id in enumerate(COCO_IDS, 1)}
SPLIT_DIRS = {"train": "train2017", "val": "val2017"}


def read_annotations(ann_file: Path) -> dict:
    """An annotations file's content; a DatasetError naming the file when it is not valid JSON."""
    try:
        return json.loads(Path(ann_file).read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{ann_file} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                           "the file is truncated or corrupt: download it again") from None


def load_annotations(ann_file: Path) -> COCO:
    """An annotations file as a COCO index."""
    coco = COCO()
    coco.dataset = read_annotations(ann_file)
    coco.createIndex()
    return coco


def class_index(category_id: int) -> int:
    """The class index 1..80 of a COCO category id (ids run 1..90 with gaps)."""
    try:
        return _CLASS_INDEX[category_id]
    except KeyError:
        raise DatasetError(f"COCO category_id {category_id} is not one of the 80 COCO 2017 categories") from None


def annotation_to_mask(coco: COCO, image_id: int, height: int, width: int) -> np.ndarray:
    """The semantic mask of one image: 0 background, 1..80 classes, 255 crowd or claimed by two classes."""
    mask = np.zeros((height, width), dtype=np.uint8)
    ignore = np.zeros((height, width), dtype=bool)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
        region = coco.annToMask(ann).astype(bool)
        if region.shape != mask.shape:
            raise DatasetError(f"COCO annotation {ann['id']} of image {image_id}: size {region.shape} "
                               f"differs from the image's {mask.shape}")
        if ann.get("iscrowd"):
            ignore |= region
            continue
        cls = class_index(ann["category_id"])
        ignore |= region & (mask != 0) & (mask != cls)
        mask[region] = cls
    mask[ignore] = IGNORE_INDEX
    return mask


def write_mask(coco: COCO, image_id: int, image: Path, mask_path: Path) -> None:
    """Write the mask of one image, sized like the image file itself."""
    with Image.open(image) as img:
        width, height = img.size
    mask = annotation_to_mask(coco, image_id, height, width)
    atomic_write(mask_path, lambda f: Image.fromarray(mask).save(f, format="PNG"))


_worker_coco: COCO | None = None


def _init_worker(coco: COCO) -> None:
    global _worker_coco
    _worker_coco = coco


def _write_in_worker(task: tuple[int, Path, Path]) -> None:
    write_mask(_worker_coco, *task)


def pending_masks(coco: COCO, image_dir: Path, mask_dir: Path, overwrite: bool) -> list[tuple[int, Path, Path]]:
    """(image id, image file, mask file) for each annotated image present on disk whose mask is to be written."""
    tasks = []
    for info in coco.loadImgs(sorted(coco.getImgIds())):
        image = image_dir / info["file_name"]
        mask_path = mask_dir / f"{image.stem}.png"
        if image.is_file() and (overwrite or not mask_path.is_file()):
            tasks.append((info["id"], image, mask_path))
    return tasks


def _run(coco: COCO, tasks: list[tuple[int, Path, Path]], workers: int) -> Iterator[None]:
    """Write the masks of `tasks` in this process or in `workers` processes, yielding once per mask."""
    workers = min(workers, len(tasks))
    if workers <= 1:
        yield from (write_mask(coco, *task) for task in tasks)
        return
    # each worker gets the COCO index once, at start, rather than with every task
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(coco,)) as pool:
        yield from pool.map(_write_in_worker, tasks, chunksize=max(1, min(64, len(tasks) // (4 * workers))))


def prepare_masks(root: str | Path, split: str = "train2017", workers: int | None = None,
                  overwrite: bool = False) -> int:
    """Write `root/masks/{stem}.png` for the images of `root/{split}`; returns how many were written."""
    root = require_dir(root, "COCO root")
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        raise DatasetError(f"COCO annotations not found: {ann_file} (expected ROOT/annotations/instances_{split}.json)")
    image_dir = require_dir(root / split, f"COCO {split} images")
    coco = load_annotations(ann_file)
    tasks = pending_masks(coco, image_dir, root / "masks", overwrite)
    results = _run(coco, tasks, workers or os.cpu_count() or 1)
    for _ in progress(results, f"COCO {split} masks", total=len(tasks)):
        pass
    return len(tasks)


def prepare_main(argv: list[str] | None = None) -> None:
    """mckd-prepare-coco ROOT [--split ...] [--workers N] [--overwrite]."""
    parser = argparse.ArgumentParser(
        prog="mckd-prepare-coco",
        description="Write the 81-class semantic masks of COCO 2017 to ROOT/masks (needed once before training).",
    )
    parser.add_argument("root", help="COCO root holding annotations/, train2017/ and val2017/")
    parser.add_argument("--split", nargs="+", default=["train2017", "val2017"], help="image folders to convert")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes")
    parser.add_argument("--overwrite", action="store_true", help="rewrite masks that already exist")
    args = parser.parse_args(argv)
    try:
        for split in args.split:
            written = prepare_masks(args.root, split, args.workers, args.overwrite)
            print(f"{split}: wrote {written} masks to {Path(args.root) / 'masks'}")
    except MckdError as err:
        parser.exit(2, f"mckd-prepare-coco: error: {err}\n")


class CocoSource(SegmentationSource):
    """COCO 2017 images with the semantic masks that `mckd-prepare-coco` wrote to `root/mask_dir`."""

    name = "coco"
    class_names = CLASS_NAMES
    has_test = False  # test2017 has no public annotations

    def __init__(self, root: str, mask_dir: str = "masks"):
        self.root = require_dir(root, "dataset.params.root")
        self.mask_dir = self.root / mask_dir

    def mask_path(self, stem: str) -> Path:
        """The prepared mask of an image, or a DatasetError saying how to make it."""
        path = self.mask_dir / f"{stem}.png"
        if not path.is_file():
            raise DatasetError(f"COCO mask not found: {path}; {self.how_to_prepare()}")
        return path

    def how_to_prepare(self) -> str:
        """How to make the missing masks: the prepare step, unless its annotations are not valid JSON."""
        for ann_file in sorted((self.root / "annotations").glob("instances_*.json")):
            try:
                read_annotations(ann_file)
            except DatasetError as err:
                return f"mckd-prepare-coco cannot make it: {err}"
        return f"run `mckd-prepare-coco {self.root}` to make the masks"

    def resolve_mask(self, mask: Path) -> Path:
        # split lists name `masks/X.png`; the masks live in `mask_dir`
        return self.mask_path(mask.stem)

    def samples(self, split: str) -> list[Sample]:
        if split not in SPLIT_DIRS:
            raise DatasetError(f"COCO split {split!r}: expected one of {tuple(SPLIT_DIRS)}")
        directory = require_dir(self.root / SPLIT_DIRS[split], "dataset.params.root")
        images = require_images(sorted(directory.glob("*.jpg")), directory, self.root, "*.jpg files")
        return [Sample(p.stem, str(p), str(self.mask_path(p.stem))) for p in images]
