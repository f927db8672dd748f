"""Dataset readers on real files (../shared) and on generated fixtures, and their errors on bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import (
    SHARED,
    coco_expected_mask,
    dataset_config,
    interior,
    link_shared_coco,
    make_camvid,
    make_cityscapes,
    make_coco,
    requires_shared,
    save,
    to_train_ids,
)
from PIL import Image
from pycocotools.coco import COCO

from mckd.data.cityscapes import CityscapesSource
from mckd.data.coco import (
    CLASS_NAMES,
    COCO_IDS,
    CocoSource,
    annotation_to_mask,
    class_index,
    prepare_main,
    prepare_masks,
)
from mckd.data.datasets import LabeledDataset
from mckd.data.registry import build_source
from mckd.data.source import DatasetError
from mckd.data.splits import build_splits
from mckd.data.transforms import eval_transform
from mckd.models import ModelConfigError, build_model

CAMVID_NAMES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
                "bicyclist")


def raw(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


# --- real files in ../shared ---

@requires_shared
def test_cityscapes_sample_label_ids_map_to_train_ids():
    source = CityscapesSource(str(SHARED / "data" / "cityscapes-sample"))
    (sample,) = source.samples("val")
    assert sample.id == "frankfurt_000000_000294"
    assert sample.mask.endswith("_gtFine_labelTrainIds.png")
    image, train_ids = source.read(sample)
    assert image.shape == (128, 256, 3) and train_ids.shape == (128, 256)
    mapped = source.read_mask(dataclasses.replace(sample, mask=sample.mask.replace("TrainIds", "Ids")))
    # The shared sample's two masks were downscaled separately, so 77 boundary pixels (0.2%) disagree;
    # away from boundaries the mapping must be exact, and each disagreement has its trainId within 2 px.
    inside = interior(mapped, radius=2)
    assert inside.mean() > 0.7
    np.testing.assert_array_equal(mapped[inside], train_ids[inside])
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(mapped, 2, mode="edge"), (5, 5))
    assert (windows == train_ids[..., None, None]).any(axis=(-2, -1)).all()
    assert (mapped != train_ids).mean() < 0.003
    assert set(np.unique(train_ids)) - {255} <= set(range(19))


@requires_shared
def test_coco_tiny_masks_follow_the_annotations(tmp_path):
    root = link_shared_coco(tmp_path / "coco")
    assert prepare_masks(root, "train2017", workers=2) == 16
    coco = COCO(str(root / "annotations" / "instances_train2017.json"))
    json_names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    crowd_images = set()
    for info in coco.loadImgs(coco.getImgIds()):
        mask = raw(root / "masks" / info["file_name"].replace(".jpg", ".png"))
        assert mask.shape == (info["height"], info["width"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=info["id"]))
        names_in_mask = {CLASS_NAMES[c] for c in np.unique(mask) if c not in (0, 255)}
        assert names_in_mask <= {json_names[a["category_id"]] for a in anns if not a["iscrowd"]}
        covered = np.zeros(mask.shape, dtype=bool)
        for ann in anns:
            region = coco.annToMask(ann).astype(bool)
            covered |= region
            if ann["iscrowd"]:
                crowd_images.add(info["id"])
                assert (mask[region] == 255).all()
            else:
                assert np.isin(mask[region], (class_index(ann["category_id"]), 255)).all()
        assert (mask[~covered] == 0).all()
    assert crowd_images == {184613}
    # a few images whose instances all keep some pixels: their class sets equal the annotations'
    for image_id in (391895, 522418, 184613):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))
        mask = raw(root / "masks" / f"{image_id:012d}.png")
        assert set(np.unique(mask)) - {0, 255} == {class_index(a["category_id"]) for a in anns}
    source = CocoSource(str(root))
    samples = source.samples("train")
    assert len(samples) == 16 and source.num_classes == 81
    image, mask = source.read(samples[0])
    assert image.shape[:2] == mask.shape


@requires_shared
def test_camvid_through_the_folder_reader_and_its_config():
    source = build_source(dataset_config("camvid", SHARED / "data" / "camvid"))
    assert source.name == "camvid" and source.class_names == CAMVID_NAMES and not source.has_test
    train, val = source.samples("train"), source.samples("val")
    assert (len(train), len(val)) == (367, 101)
    image, mask = source.read(train[0])
    assert image.shape == (360, 480, 3)
    values = raw(train[0].mask)
    assert (values == 11).any()
    np.testing.assert_array_equal(mask, np.where(values == 11, 255, values))


@requires_shared
def test_local_mobilenet_v2_weights_load_into_the_smp_encoder():
    path = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
    model = build_model({"arch": "Unet", "encoder": "mobilenet_v2", "encoder_weights": str(path)}, 5)
    expected = torch.load(path, map_location="cpu", weights_only=True)
    loaded = model.encoder.state_dict()
    assert set(expected) - set(loaded) == {"classifier.1.weight", "classifier.1.bias"}
    for key, value in loaded.items():
        assert torch.equal(value, expected[key]), key


# --- generated fixtures ---

def test_cityscapes_fixture_label_ids_equal_train_ids(tmp_path):
    root = make_cityscapes(tmp_path, {"train": 3, "val": 2})
    source = CityscapesSource(str(root))
    assert [s.id for s in source.samples("val")] == ["aachen_000000_000019", "aachen_000001_000019"]
    for sample in source.samples("train"):
        _, train_ids = source.read(sample)
        label_ids = dataclasses.replace(sample, mask=sample.mask.replace("TrainIds", "Ids"))
        np.testing.assert_array_equal(source.read_mask(label_ids), train_ids)


def test_cityscapes_reads_label_ids_when_train_ids_are_absent(tmp_path):
    root = make_cityscapes(tmp_path, {"train": 2}, train_ids=False)
    source = CityscapesSource(str(root))
    for sample in source.samples("train"):
        assert sample.mask.endswith("_gtFine_labelIds.png")
        np.testing.assert_array_equal(source.read_mask(sample), to_train_ids(raw(sample.mask)))


def test_coco_class_tables():
    assert len(CLASS_NAMES) == 81 and CLASS_NAMES[0] == "background"
    assert len(COCO_IDS) == 80 and list(COCO_IDS) == sorted(set(COCO_IDS))
    assert [class_index(i) for i in (1, 2, 13, 90)] == [1, 2, 12, 80]
    assert CLASS_NAMES[class_index(90)] == "toothbrush"
    with pytest.raises(DatasetError, match="category_id 12"):
        class_index(12)


def test_coco_fixture_masks_are_exact(tmp_path):
    root = make_coco(tmp_path, n_images=3)
    make_coco(tmp_path, n_images=2, split="val2017")
    assert prepare_masks(root, "train2017", workers=2) == 3
    assert prepare_masks(root, "val2017", workers=1) == 2
    source = CocoSource(str(root))
    expected = coco_expected_mask((48, 64))
    assert set(np.unique(expected)) == {0, 1, 3, 80, 255}
    train, val = source.samples("train"), source.samples("val")
    assert (len(train), len(val)) == (3, 2)
    for sample in train + val:
        image, mask = source.read(sample)
        assert image.shape == (48, 64, 3)
        np.testing.assert_array_equal(mask, expected)


def test_coco_prepare_skips_existing_masks_unless_overwrite(tmp_path):
    root = make_coco(tmp_path, n_images=2, prepare=True)
    mask = root / "masks" / "000000100000.png"
    save(np.zeros((48, 64), dtype=np.uint8), mask)
    assert prepare_masks(root, workers=1) == 0
    assert not raw(mask).any()
    assert prepare_masks(root, workers=1, overwrite=True) == 2
    np.testing.assert_array_equal(raw(mask), coco_expected_mask((48, 64)))
    assert sorted(p.name for p in (root / "masks").iterdir()) == ["000000100000.png", "000000100001.png"]


def test_coco_prepare_only_images_present_on_disk(tmp_path):
    root = make_coco(tmp_path, n_images=3)
    (root / "train2017" / "000000100001.jpg").unlink()
    assert prepare_masks(root, workers=1) == 2
    assert not (root / "masks" / "000000100001.png").exists()


def test_coco_prepare_cli(tmp_path, capsys):
    root = make_coco(tmp_path, n_images=2)
    prepare_main([str(root), "--split", "train2017", "--workers", "1"])
    assert "train2017: wrote 2 masks" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        prepare_main([str(root), "--split", "val2017"])
    assert exit_info.value.code == 2
    assert "instances_val2017.json" in capsys.readouterr().err


def test_coco_missing_annotations_name_the_file(tmp_path):
    (tmp_path / "train2017").mkdir()
    with pytest.raises(DatasetError, match=r"annotations/instances_train2017\.json"):
        prepare_masks(tmp_path)


def test_coco_annotation_size_must_match_the_image(tmp_path):
    root = make_coco(tmp_path, n_images=1)
    coco = COCO(str(root / "annotations" / "instances_train2017.json"))
    with pytest.raises(DatasetError, match="image 100000"):
        annotation_to_mask(coco, 100000, 50, 64)


def test_coco_missing_masks_say_to_run_the_prepare_step(tmp_path):
    root = make_coco(tmp_path, n_images=2)
    with pytest.raises(DatasetError, match=f"mckd-prepare-coco {tmp_path}") as err:
        CocoSource(str(root)).samples("train")
    assert "masks/000000100000.png" in str(err.value)


def test_coco_split_lists_use_the_mask_dir(tmp_path):
    root = make_coco(tmp_path, n_images=3, prepare=True)
    make_coco(tmp_path, n_images=1, split="val2017", prepare=True)
    (root / "masks").rename(root / "semantic")
    (tmp_path / "labeled.txt").write_text("train2017/000000100001.jpg masks/000000100001.png\n")
    source = build_source({"kind": "coco", "params": {"root": str(root), "mask_dir": "semantic"}})
    splits = build_splits(source, {"labeled_list": str(tmp_path / "labeled.txt")})
    assert [s.mask for s in splits.labeled] == [str(root / "semantic" / "000000100001.png")]
    assert [s.id for s in splits.unlabeled] == ["000000100000", "000000100002"]
    assert [s.mask for s in splits.val] == [str(root / "semantic" / "000000500000.png")]
    assert splits.test == []


def test_camvid_fixture_through_the_folder_reader(tmp_path):
    root = make_camvid(tmp_path, n_train=3, n_val=2, n_test=1)
    source = build_source(dataset_config("camvid", root))
    assert source.num_classes == 11 and source.has_test
    assert [len(source.samples(s)) for s in ("train", "val", "test")] == [3, 2, 1]
    sample = source.samples("train")[0]
    values = raw(sample.mask)
    np.testing.assert_array_equal(source.read(sample)[1], np.where(values == 11, 255, values))


# --- bad input ---

@pytest.mark.parametrize("kind, params", [
    ("cityscapes", {}), ("coco", {}),
    ("folder", {"class_names": ["a"], "splits": {"train": ["images", "masks"]}}),
])
def test_missing_dataset_root_names_the_key(tmp_path, kind, params):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=f"dataset.params.root={missing}: directory not found"):
        build_source({"kind": kind, "params": {"root": str(missing), **params}})


def test_unknown_dataset_kind_names_the_key():
    with pytest.raises(DatasetError, match="dataset.kind='imagenet'"):
        build_source({"kind": "imagenet", "params": {}})


def test_unknown_model_arch_raises_model_config_error():
    with pytest.raises(ModelConfigError, match="arch='NoSuchNet'"):
        build_model({"arch": "NoSuchNet", "encoder": "mobilenet_v2", "encoder_weights": None}, 5)


@pytest.mark.parametrize("arch", ["Unet", "deeplabv3_mobilenet_v3_large"])
def test_networks_run_channels_last_and_return_contiguous_nchw_logits(arch):
    model = build_model({"arch": arch, "encoder": "mobilenet_v2", "encoder_weights": None}, 5).eval()
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x = torch.randn(2, 3, 40, 52)  # not a multiple of 32: padded, and the logits cropped back
    with torch.no_grad():
        out = model(x)
        model.net.to(memory_format=torch.contiguous_format)  # the same weights in NCHW
        expected = model(x)
    assert out.shape == (2, 5, 40, 52) and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("encoder", ["mobilenet_v2", "resnet18"])
def test_every_trainable_parameter_gets_a_gradient_when_the_encoder_is_shallower(encoder):
    # DDP stops at its second step when a trainable parameter got no gradient (unet_mobilenet_v2_small's depth 4)
    model = build_model({"arch": "Unet", "encoder": encoder, "encoder_weights": None, "encoder_depth": 4,
                         "decoder_channels": [64, 32, 16, 8]}, 3)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert any(not p.requires_grad for p in model.parameters())  # smp's unused deepest stage, frozen
    full = build_model({"arch": "Unet", "encoder": encoder, "encoder_weights": None}, 3)
    assert all(p.requires_grad for p in full.parameters())


def test_folder_image_without_mask_is_unlabeled_and_none_with_a_mask_names_the_cause(tmp_path):
    root = make_camvid(tmp_path, n_train=2, n_val=1)
    (root / "trainannot" / "0001TP_train_0001.png").unlink()
    source = build_source(dataset_config("camvid", root))
    assert [s.mask is None for s in source.samples("train")] == [False, True]
    splits = build_splits(source, {"num_labeled": 1})
    assert [s.id for s in splits.labeled] == ["0001TP_train_0000"]
    assert [s.id for s in splits.unlabeled] == ["0001TP_train_0001"]
    (root / "trainannot" / "0001TP_train_0000.png").unlink()
    with pytest.raises(DatasetError, match="none of the 2 train images has a mask"):
        build_splits(source, {"num_labeled": 1})


def test_empty_images_folder_names_the_root(tmp_path):
    root = make_camvid(tmp_path, n_train=0, n_val=1)
    (root / "train").mkdir()
    with pytest.raises(DatasetError, match=f"dataset.params.root={root}: no images in {root / 'train'}"):
        build_source(dataset_config("camvid", root)).samples("train")


def test_split_needing_masks_rejects_images_without_ground_truth(tmp_path):
    root = make_cityscapes(tmp_path, {"train": 1}, label_ids=False, train_ids=False)
    source = CityscapesSource(str(root))
    (sample,) = source.samples("train")
    assert sample.mask is None
    with pytest.raises(DatasetError, match=f"{sample.image} has no mask"):
        LabeledDataset(source, [sample], eval_transform())


def test_mask_value_outside_the_classes_names_the_file(tmp_path):
    root = make_camvid(tmp_path, n_train=1, n_val=0)
    source = build_source(dataset_config("camvid", root))
    (sample,) = source.samples("train")
    save(np.full((36, 48), 12, dtype=np.uint8), Path(sample.mask))
    with pytest.raises(DatasetError, match=r"values \[12\] are neither classes 0..10") as err:
        source.read(sample)
    assert sample.mask in str(err.value)


def test_image_mask_size_mismatch_names_both_files(tmp_path):
    root = make_camvid(tmp_path, n_train=1, n_val=0)
    source = build_source(dataset_config("camvid", root))
    (sample,) = source.samples("train")
    save(np.zeros((30, 48), dtype=np.uint8), Path(sample.mask))
    with pytest.raises(DatasetError, match="differs from its image") as err:
        source.read(sample)
    assert sample.mask in str(err.value) and sample.image in str(err.value)


def test_unknown_coco_category_fails_the_prepare_step(tmp_path):
    root = make_coco(tmp_path, n_images=1)
    ann_file = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["category_id"] = 12  # not a COCO 2017 category
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="category_id 12"):
        prepare_masks(root, workers=2)
