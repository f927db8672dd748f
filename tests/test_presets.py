"""The experiment presets (mckd/conf/experiment): each composes, and each runs with debug=smoke on generated data.

The data are generated in each dataset's layout with every file that the presets' split lists name (tiny images,
a few file contents reused, so the thousands of files take a second or two). One preset per family runs the whole
pipeline; the others run `stage=teacher` (train the teacher, label the unlabeled split): with the presets'
ResNet-101/50 networks a whole pipeline takes ~17 s on 2 CPU cores, the teacher step ~10 s.
"""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from mckd.cli import run_pipeline
from mckd.models.factory import model_config

CONF_DIR = Path(str(resources.files("mckd") / "conf"))
SPLITS_DIR = Path(str(resources.files("mckd") / "splits"))
CITYSCAPES = ["cityscapes_1_16", "cityscapes_1_8", "cityscapes_1_4", "cityscapes_1_2"]
COCO = ["coco_1_512", "coco_1_256", "coco_1_128", "coco_1_64", "coco_1_32"]
SIZE = (16, 32)  # (height, width) of every generated image
COCO_EXTRA_UNLABELED = 4  # train2017 images in no split list: COCO's unlabeled split is the rest of train2017
# offline: the presets ask for ImageNet weights, which would be downloaded
OFFLINE = ["teacher.encoder_weights=null", "student.encoder_weights=null"]


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def variants(fmt: str, values: np.ndarray | None, count: int = 4, seed: int = 0) -> list[bytes]:
    """`count` encoded images of SIZE: RGB noise when `values` is None, else masks drawn from `values`."""
    rng = np.random.default_rng(seed)
    if values is None:
        return [encoded(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8), fmt) for _ in range(count)]
    return [encoded(rng.choice(values, SIZE).astype(np.uint8), fmt) for _ in range(count)]


def listed(lists: list[Path]) -> list[str]:
    return [line for path in lists for line in path.read_text().splitlines()]


def write_listed(root: Path, lines: list[str], image_fmt: str, mask_values: np.ndarray) -> int:
    """Write the files of split-list lines `IMAGE MASK` under `root`; returns the number of images."""
    images, masks = variants(image_fmt, None), variants("PNG", mask_values, seed=1)
    pairs = sorted({tuple(line.split()) for line in lines if line.strip()})
    for i, (image, mask) in enumerate(pairs):
        for rel, blobs in ((image, images), (mask, masks)):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blobs[i % len(blobs)])
    return len(pairs)


def make_cityscapes_from_lists(root: Path) -> Path:
    """Cityscapes layout with every image and labelTrainIds mask of mckd/splits/cityscapes (train and val)."""
    write_listed(root, listed(sorted((SPLITS_DIR / "cityscapes").rglob("*.txt"))), "PNG", np.array([*range(19), 255]))
    return root


def make_coco_from_lists(root: Path) -> Path:
    """COCO layout (train2017/, val2017/, prepared masks/) with every file of mckd/splits/coco, plus a few more
    train2017 images (with masks) that no list names."""
    extra = [f"train2017/{9 * 10**11 + i:012d}.jpg masks/{9 * 10**11 + i:012d}.png"
             for i in range(COCO_EXTRA_UNLABELED)]
    write_listed(root, listed(sorted((SPLITS_DIR / "coco").rglob("*.txt"))) + extra, "JPEG",
                 np.array([*range(81), 255]))
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a small CPU shared with other processes, threads that wait for each other at every
    operation make these tiny runs many times slower (seen: 40 s instead of 10 s per preset on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory) -> Path:
    return make_cityscapes_from_lists(tmp_path_factory.mktemp("cityscapes"))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return make_coco_from_lists(tmp_path_factory.mktemp("coco"))


def preset_config(name: str, overrides: list[str] = ()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={name}", *overrides])


def smoke_config(name: str, root: Path, exp: Path, *extra: str):
    return preset_config(name, ["debug=smoke", "trainer=cpu", f"experiment_dir={exp}",
                                f"dataset.params.root={root}", *OFFLINE, *extra])


def all_presets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_the_standard_presets_exist() -> None:
    assert set(CITYSCAPES + COCO) <= set(all_presets())


@pytest.mark.parametrize("name", all_presets())
def test_every_preset_composes(name: str, tmp_path: Path) -> None:
    cfg = preset_config(name, [f"experiment_dir={tmp_path}"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    for key in ("labeled_list", "unlabeled_list", "val_list"):
        if cfg.dataset.split.get(key):
            assert (SPLITS_DIR / cfg.dataset.split[key]).is_file(), cfg.dataset.split[key]


@pytest.mark.parametrize("name", CITYSCAPES + COCO)
def test_standard_settings(name: str, tmp_path: Path) -> None:
    cfg = preset_config(name, [f"experiment_dir={tmp_path}"])
    family, split = name.split("_", 1)
    assert cfg.dataset.name == family
    assert cfg.dataset.split.labeled_list == f"{family}/{split}/labeled.txt"
    assert cfg.teacher.arch == "DeepLabV3Plus" and cfg.teacher.encoder == "resnet101"
    assert cfg.student.encoder == "resnet50"
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 4 and cfg.trainer.sync_batchnorm
    assert cfg.optim.name == "sgd" and cfg.optim.poly_power == 0.9 and cfg.dataset.batch_size == 2
    networks = [model_config(node, cfg.dataset.crop_size) for node in (cfg.teacher, cfg.student)]
    output_stride, rates = (8, [12, 24, 36]) if family == "cityscapes" else (16, [6, 12, 18])  # UniMatch's
    for net in networks:
        assert net.get("encoder_output_stride", 16) == output_stride and net["decoder_atrous_rates"] == rates
    if family == "cityscapes":
        assert cfg.dataset.split.unlabeled_list == f"cityscapes/{split}/unlabeled.txt"
        assert list(cfg.dataset.crop_size) == [801, 801] and cfg.optim.lr == 0.005
        assert cfg.train.teacher_epochs == 240 and list(cfg.eval.window) == [801, 801]
    else:
        assert cfg.dataset.split.get("unlabeled_list") is None  # the rest of train2017
        assert list(cfg.dataset.crop_size) == [513, 513] and cfg.optim.lr == 0.004
        assert cfg.train.teacher_epochs == 30 and cfg.eval.window is None


# What each ratio preset sets over its dataset's base (experiment/base/<family>.yaml); every other key is the base's.
# min_epoch_size is the size of the unlabeled split (the train images that the labeled list does not name).
RATIO_MIN_EPOCH_SIZE = {
    "cityscapes_1_16": 2789, "cityscapes_1_8": 2603, "cityscapes_1_4": 2231, "cityscapes_1_2": 1487,
    "coco_1_512": 118055, "coco_1_256": 117824, "coco_1_128": 117362, "coco_1_64": 116438, "coco_1_32": 114590,
}


def test_the_bases_are_not_presets() -> None:
    """The bases are out of the preset list and leave min_epoch_size, which each ratio file sets, to the schema's
    default (a `???` there could not make it mandatory: OmegaConf keeps the schema's earlier null over it)."""
    assert not any(name.startswith("base") for name in all_presets())
    for family in ("cityscapes", "coco"):
        cfg = preset_config(f"base/{family}", ["experiment_dir=x"])
        assert OmegaConf.missing_keys(cfg) == set() and cfg.dataset.min_epoch_size is None


@pytest.mark.parametrize("name", CITYSCAPES + COCO)
def test_ratio_preset_is_its_base_and_its_split(name: str) -> None:
    family, split = name.split("_", 1)
    ratio = OmegaConf.to_container(preset_config(name, ["experiment_dir=x"]))
    base = OmegaConf.to_container(preset_config(f"base/{family}", ["experiment_dir=x"]))
    assert ratio["dataset"]["split"]["labeled_list"] == f"{family}/{split}/labeled.txt"
    assert ratio["dataset"]["min_epoch_size"] == RATIO_MIN_EPOCH_SIZE[name]
    split_keys = ["labeled_list"]
    if family == "cityscapes":  # COCO's unlabeled split is the rest of train2017: no list
        split_keys.append("unlabeled_list")
        assert ratio["dataset"]["split"]["unlabeled_list"] == f"cityscapes/{split}/unlabeled.txt"
        unlabeled = SPLITS_DIR / "cityscapes" / split / "unlabeled.txt"
        assert RATIO_MIN_EPOCH_SIZE[name] == len(unlabeled.read_text().splitlines())
    for key in split_keys:
        base["dataset"]["split"][key] = ratio["dataset"]["split"][key]
    base["dataset"]["min_epoch_size"] = ratio["dataset"]["min_epoch_size"]
    assert ratio == base


WHOLE_PIPELINE = ("cityscapes_1_16",)  # both families have the same networks; the COCO reader: tests/test_readers.py


# the default suite runs one whole pipeline; the other presets' teachers are `slow`
@pytest.mark.parametrize("name", [name if name in WHOLE_PIPELINE else pytest.param(name, marks=pytest.mark.slow)
                                  for name in CITYSCAPES + COCO])
def test_preset_smoke(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    root = request.getfixturevalue("cityscapes_root" if name.startswith("cityscapes") else "coco_root")
    exp = tmp_path / "exp"
    if name in WHOLE_PIPELINE:
        results = run_pipeline(smoke_config(name, root, exp))
        assert results["final"] is not None and results["final"]["val_miou"] is not None
    else:
        run_pipeline(smoke_config(name, root, exp, "stage=teacher"))
    cfg = smoke_config(name, root, exp)
    assert (exp / "steps" / "teacher.json").is_file()
    assert (exp / "pseudo_labels" / "stage0" / "manifest.json").is_file()
    assert len(list((exp / "pseudo_labels" / "stage0" / "labels").glob("*.png"))) == cfg.dataset.split.max_unlabeled
