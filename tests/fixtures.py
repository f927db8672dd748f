"""Small datasets generated on disk in each supported layout, the shared-data skip marker, and the dataset config of
an experiment that mckd-train made.

Import from tests as `from fixtures import make_cityscapes, ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from mckd import layout
from mckd.data.coco import CLASS_NAMES as COCO_NAMES
from mckd.data.coco import COCO_IDS, class_index

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
requires_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not found at {SHARED}")
CONF_DIR = Path(__file__).resolve().parents[1] / "mckd" / "conf"

CITYSCAPES_CITY = "aachen"
CAMVID_UNLABELLED = 11
# The official labelId -> trainId table (../shared/README.md), kept apart from the reader's own copy.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
# labelIds the fixture draws from: all 19 train classes plus some ignored ids (0 unlabeled, 1 ego vehicle, 4 static)
CITYSCAPES_DRAW_IDS = np.array([0, 1, 4, *CITYSCAPES_TRAIN_IDS], dtype=np.uint8)


def dataset_config(name: str, root: str | Path, seed: int = 0, **overrides) -> DictConfig:
    """conf/dataset/{name}.yaml resolved, with params.root = `root` and `overrides` merged over its top-level keys."""
    cfg = OmegaConf.create({"seed": seed, "dataset": OmegaConf.load(CONF_DIR / "dataset" / f"{name}.yaml")})
    cfg.dataset.params.root = str(root)
    dataset = OmegaConf.create(OmegaConf.to_container(cfg.dataset, resolve=True))
    return OmegaConf.merge(dataset, overrides)


def blocky_labels(rng: np.random.Generator, size: tuple[int, int], values: np.ndarray, block: int = 4) -> np.ndarray:
    """An HxW map of `values` drawn per `block`x`block` tile, so resizing keeps most of it intact."""
    h, w = size
    tiles = rng.choice(values, size=(-(-h // block), -(-w // block)))
    return np.kron(tiles, np.ones((block, block), dtype=tiles.dtype))[:h, :w].astype(np.uint8)


def random_image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    return rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)


def save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def interior(labels: np.ndarray | torch.Tensor, radius: int) -> np.ndarray:
    """Pixels whose (2*radius+1)^2 neighbourhood lies inside the map and holds a single label."""
    x = torch.as_tensor(np.asarray(labels), dtype=torch.float32)[None, None]
    pool = torch.nn.functional.max_pool2d
    uniform = (pool(x, 2 * radius + 1, stride=1) == -pool(-x, 2 * radius + 1, stride=1))[0, 0].numpy()
    return np.pad(uniform, radius, constant_values=False)


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds -> trainIds, 255 for ignored ids."""
    train = np.full_like(label_ids, 255)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        train[label_ids == label_id] = train_id
    return train


def make_cityscapes(root: str | Path, splits: dict[str, int] | None = None, size: tuple[int, int] = (32, 64),
                    label_ids: bool = True, train_ids: bool = True, seed: int = 0) -> Path:
    """Cityscapes official layout: `splits` maps split -> image count; masks as labelIds and/or labelTrainIds.

    Files: leftImg8bit/{split}/aachen/aachen_{i:06d}_000019_leftImg8bit.png and
    gtFine/{split}/aachen/aachen_{i:06d}_000019_gtFine_{labelIds,labelTrainIds}.png.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (splits or {"train": 4, "val": 2}).items():
        for i in range(count):
            stem = f"{CITYSCAPES_CITY}_{i:06d}_000019"
            save(random_image(rng, size), root / "leftImg8bit" / split / CITYSCAPES_CITY / f"{stem}_leftImg8bit.png")
            ids = blocky_labels(rng, size, CITYSCAPES_DRAW_IDS)
            gt = root / "gtFine" / split / CITYSCAPES_CITY
            if label_ids:
                save(ids, gt / f"{stem}_gtFine_labelIds.png")
            if train_ids:
                save(to_train_ids(ids), gt / f"{stem}_gtFine_labelTrainIds.png")
    return root


def make_camvid(root: str | Path, n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (36, 48),
                n_test: int = 0, seed: int = 0, videos: tuple[str, ...] = ("0001TP",)) -> Path:
    """CamVid in the SegNet layout: {train,val,test}/ RGB PNGs and {split}annot/ masks with values 0..11; train
    images take turns among `videos` (the ids' prefixes, as CamVid's sequences)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    values = np.arange(CAMVID_UNLABELLED + 1)
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(count):
            video = videos[i % len(videos)] if split == "train" else videos[0]
            name = f"{video}_{split}_{i:04d}.png"
            save(random_image(rng, size), root / split / name)
            save(blocky_labels(rng, size, values), root / f"{split}annot" / name)
    return root


# Per image: (category_id, iscrowd, box x0, y0, x1, y1) in fractions of the width and height.
COCO_OBJECTS = (
    (1, 0, (0.05, 0.05, 0.45, 0.60)),   # person
    (1, 0, (0.30, 0.40, 0.60, 0.80)),   # another person overlapping the first: same class, stays 1
    (3, 0, (0.50, 0.10, 0.90, 0.50)),   # car overlapping the second person: the overlap becomes 255
    (90, 0, (0.70, 0.70, 0.95, 0.95)),  # toothbrush, the last category id: class 80
    (18, 1, (0.00, 0.75, 0.40, 1.00)),  # a crowd of dogs (uncompressed RLE) over the second person: 255
)
COCO_SPLIT_ID_BASE = {"train2017": 100000, "val2017": 500000}


def coco_boxes(size: tuple[int, int]) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """COCO_OBJECTS in pixels for an image of `size` (height, width)."""
    h, w = size
    return [(cat, crowd, (round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))
            for cat, crowd, (x0, y0, x1, y1) in COCO_OBJECTS]


def coco_expected_mask(size: tuple[int, int]) -> np.ndarray:
    """The semantic mask the prepare step must write for a `make_coco` image of `size`."""
    regions: dict[int, np.ndarray] = {}
    crowd = np.zeros(size, dtype=bool)
    for cat, is_crowd, (x0, y0, x1, y1) in coco_boxes(size):
        region = crowd if is_crowd else regions.setdefault(class_index(cat), np.zeros(size, dtype=bool))
        region[y0:y1, x0:x1] = True
    mask = np.zeros(size, dtype=np.uint8)
    for cls, region in regions.items():
        mask[region] = cls
    mask[(sum(r.astype(int) for r in regions.values()) > 1) | crowd] = 255
    return mask


def uncompressed_rle(region: np.ndarray) -> dict:
    """A binary mask as COCO's uncompressed RLE: column-major run lengths, the first run of zeros."""
    flat = region.flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(region.shape), "counts": [0, *counts] if flat[0] else counts}


def coco_segmentation(is_crowd: int, box: tuple[int, int, int, int], size: tuple[int, int]) -> list | dict:
    x0, y0, x1, y1 = box
    if not is_crowd:
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]
    region = np.zeros(size, dtype=np.uint8)
    region[y0:y1, x0:x1] = 1
    return uncompressed_rle(region)


def make_coco(root: str | Path, n_images: int = 3, size: tuple[int, int] = (48, 64), split: str = "train2017",
              prepare: bool = False, seed: int = 0) -> Path:
    """COCO layout: {split}/{id:012d}.jpg and annotations/instances_{split}.json with COCO_OBJECTS per image.

    Each image has polygons (incl. same-class and different-class overlaps) and a crowd RLE; its expected
    mask is `coco_expected_mask(size)`. `prepare=True` also writes masks/ with the prepare step.
    Call once per split ("train2017", "val2017"); image ids do not collide across splits.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    images, annotations = [], []
    for i in range(n_images):
        image_id = COCO_SPLIT_ID_BASE[split] + i
        file_name = f"{image_id:012d}.jpg"
        (root / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_image(rng, size)).save(root / split / file_name, quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for cat, is_crowd, box in coco_boxes(size):
            x0, y0, x1, y1 = box
            annotations.append({
                "id": len(annotations) + 1 + image_id * 10, "image_id": image_id, "category_id": cat,
                "iscrowd": is_crowd, "segmentation": coco_segmentation(is_crowd, box, size),
                "area": float((x1 - x0) * (y1 - y0)), "bbox": [x0, y0, x1 - x0, y1 - y0],
            })
    categories = [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in zip(COCO_IDS, COCO_NAMES[1:])]
    ann_file = root / "annotations" / f"instances_{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    if prepare:
        from mckd.data.coco import prepare_masks

        prepare_masks(root, split, workers=1)
    return root


def link_shared_coco(tmp_root: str | Path) -> Path:
    """A COCO root in `tmp_root` whose images and annotations link to ../shared's coco-tiny (masks go to tmp)."""
    tmp_root = Path(tmp_root)
    tmp_root.mkdir(parents=True, exist_ok=True)
    for name in ("train2017", "annotations"):
        (tmp_root / name).symlink_to(SHARED / "data" / "coco-tiny" / name, target_is_directory=True)
    return tmp_root


def experiment_dataset(experiment: Path) -> DictConfig:
    """An experiment's dataset config as mckd-train composed it (`.hydra/config.yaml`), its `${seed}` resolved."""
    full = OmegaConf.load(Path(experiment) / layout.CONFIG)
    return OmegaConf.create(OmegaConf.to_container(full.dataset, resolve=True))
