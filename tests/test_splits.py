"""Labeled / unlabeled / val / test splits: seeded counts, the shipped standard lists, limits and errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fixtures import dataset_config, make_camvid, make_cityscapes

from mckd.data.cityscapes import CityscapesSource
from mckd.data.coco import CocoSource
from mckd.data.registry import build_source
from mckd.data.source import DatasetError, Sample
from mckd.data.splits import build_splits, read_split_list, resolve_list_path, shuffled, split_by_count

CITYSCAPES_TRAIN = 2975
CITYSCAPES_LABELED = {"1_30": 100, "1_16": 186, "1_8": 372, "1_4": 744, "1_2": 1488}
COCO_LABELED = {"1_512": 232, "1_256": 463, "1_128": 925, "1_64": 1849, "1_32": 3697}
CITYSCAPES_LINE = re.compile(r"leftImg8bit/(train|val)/(\w+)/(\2_\d{6}_\d{6})_leftImg8bit\.png "
                             r"gtFine/\1/\2/\3_gtFine_labelTrainIds\.png")
COCO_LINE = re.compile(r"(train|val)2017/(\d{12})\.jpg masks/\2\.png")


def list_lines(path: str) -> list[str]:
    return [line for line in resolve_list_path(path).read_text().splitlines() if line.strip()]


def touch_listed(root: Path, *lists: str) -> None:
    """Empty files for every path named in the split lists: enough to parse them, never read."""
    for path in lists:
        for name in {part for line in list_lines(path) for part in line.split()}:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).touch()


def pool(n: int) -> list[Sample]:
    return [Sample(f"s{i:03d}", f"s{i:03d}.png", f"s{i:03d}_mask.png") for i in range(n)]


# --- the shipped standard lists ---

@pytest.mark.parametrize("path, count", [
    *((f"cityscapes/{r}/labeled.txt", n) for r, n in CITYSCAPES_LABELED.items()),
    *((f"cityscapes/{r}/unlabeled.txt", CITYSCAPES_TRAIN - n) for r, n in CITYSCAPES_LABELED.items()),
    ("cityscapes/val.txt", 500),
    *((f"coco/{r}/labeled.txt", n) for r, n in COCO_LABELED.items()),
    ("coco/val.txt", 5000),
])
def test_shipped_lists_have_the_standard_sizes_and_line_format(path, count):
    lines = list_lines(path)
    assert len(lines) == count == len(set(lines))
    pattern = CITYSCAPES_LINE if path.startswith("cityscapes") else COCO_LINE
    split = "val" if path.endswith("val.txt") else "train"
    for line in lines:
        match = pattern.fullmatch(line)
        assert match and match.group(1) == split, line


@pytest.mark.parametrize("ratio", CITYSCAPES_LABELED)
def test_cityscapes_labeled_and_unlabeled_lists_partition_train(ratio):
    labeled = set(list_lines(f"cityscapes/{ratio}/labeled.txt"))
    unlabeled = set(list_lines(f"cityscapes/{ratio}/unlabeled.txt"))
    assert not labeled & unlabeled
    assert len(labeled | unlabeled) == CITYSCAPES_TRAIN


def test_cityscapes_default_config_reads_the_1_16_lists(tmp_path):
    cfg = dataset_config("cityscapes", tmp_path)
    touch_listed(tmp_path, cfg.split.labeled_list, cfg.split.unlabeled_list, cfg.split.val_list)
    splits = build_splits(CityscapesSource(str(tmp_path)), cfg.split)
    assert [len(splits.labeled), len(splits.unlabeled), len(splits.val), len(splits.test)] == [186, 2789, 500, 0]
    first = list_lines("cityscapes/1_16/labeled.txt")[0].split()
    assert splits.labeled[0] == Sample(Path(first[0]).name.removesuffix("_leftImg8bit.png"),
                                       str(tmp_path / first[0]), str(tmp_path / first[1]))


def test_coco_default_config_reads_the_1_512_list_and_takes_the_rest_unlabeled(tmp_path):
    cfg = dataset_config("coco", tmp_path)
    touch_listed(tmp_path, cfg.split.labeled_list)
    for name in ("train2017/000000999991.jpg", "masks/000000999991.png", "val2017/000000999992.jpg",
                 "masks/000000999992.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    splits = build_splits(CocoSource(str(tmp_path)), {**cfg.split, "val_list": None})
    assert len(splits.labeled) == 232
    assert [s.id for s in splits.unlabeled] == ["000000999991"]
    assert [s.id for s in splits.val] == ["000000999992"]


# --- seeded splits by count or ratio ---

def test_split_by_count_is_deterministic_disjoint_and_complete():
    samples = pool(50)
    labeled, unlabeled = split_by_count(samples, 10, None, seed=3)
    assert (labeled, unlabeled) == split_by_count(list(reversed(samples)), 10, None, seed=3)
    assert len(labeled) == 10 and len(unlabeled) == 40
    assert not {s.id for s in labeled} & {s.id for s in unlabeled}
    assert sorted(labeled + unlabeled, key=lambda s: s.id) == samples
    assert labeled == sorted(labeled, key=lambda s: s.id)
    assert split_by_count(samples, 10, None, seed=4)[0] != labeled


def test_split_by_ratio_rounds_and_keeps_at_least_one():
    assert len(split_by_count(pool(50), None, 0.125, seed=0)[0]) == 6
    assert len(split_by_count(pool(5), None, 0.01, seed=0)[0]) == 1
    assert len(split_by_count(pool(5), None, 1.0, seed=0)[1]) == 0


def test_shuffled_depends_on_ids_not_input_order():
    samples = pool(20)
    assert shuffled(samples, 7) == shuffled(samples[::-1], 7)
    assert shuffled(samples, 7) != shuffled(samples, 8)


@pytest.mark.parametrize("num, ratio, message", [
    (None, None, "set labeled_list, num_labeled or labeled_ratio"),
    (0, None, r"num_labeled=0: expected 1\.\.10"),
    (11, None, r"num_labeled=11: expected 1\.\.10"),
    (None, 1.5, r"labeled_ratio=1\.5: expected a fraction"),
    (None, 0.0, r"labeled_ratio=0\.0: expected a fraction"),
])
def test_split_by_count_rejects_bad_sizes(num, ratio, message):
    with pytest.raises(DatasetError, match=message):
        split_by_count(pool(10), num, ratio, seed=0)


def test_build_splits_by_ratio_with_limits(tmp_path):
    source = build_source(dataset_config("camvid", make_camvid(tmp_path, n_train=16, n_val=5, n_test=4)))
    full = build_splits(source, {"labeled_ratio": 0.25, "seed": 1})
    assert [len(full.labeled), len(full.unlabeled), len(full.val), len(full.test)] == [4, 12, 5, 4]
    limits = {"max_labeled": 3, "max_unlabeled": 5, "max_val": 2, "max_test": 1}
    limited = build_splits(source, {"labeled_ratio": 0.25, "seed": 1, **limits})
    assert [len(limited.labeled), len(limited.unlabeled), len(limited.val), len(limited.test)] == [3, 5, 2, 1]
    assert limited.labeled == full.labeled[:3] and limited.val == full.val[:2]
    no_limit = build_splits(source, {"labeled_ratio": 0.25, "seed": 1, "max_val": None, "max_test": 0})
    assert (len(no_limit.val), len(no_limit.test)) == (5, 4)


# --- split lists ---

def write_list(path: Path, lines: list[str]) -> str:
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def cityscapes_line(i: int) -> str:
    stem = f"leftImg8bit/train/aachen/aachen_{i:06d}_000019"
    return f"{stem}_leftImg8bit.png gtFine/train/aachen/aachen_{i:06d}_000019_gtFine_labelTrainIds.png"


def test_lists_with_unlabeled_masks_off_and_the_rest_of_train(tmp_path):
    source = CityscapesSource(str(make_cityscapes(tmp_path / "cs", {"train": 4, "val": 1})))
    labeled = write_list(tmp_path / "l.txt", [cityscapes_line(0), "", cityscapes_line(2)])
    unlabeled = write_list(tmp_path / "u.txt", [cityscapes_line(1)])
    splits = build_splits(source, {"labeled_list": labeled, "unlabeled_list": unlabeled, "unlabeled_masks": False})
    assert [s.id for s in splits.labeled] == ["aachen_000000_000019", "aachen_000002_000019"]
    assert [(s.id, s.mask) for s in splits.unlabeled] == [("aachen_000001_000019", None)]
    rest = build_splits(source, {"labeled_list": labeled})
    assert [s.id for s in rest.unlabeled] == ["aachen_000001_000019", "aachen_000003_000019"]
    assert all(s.mask for s in rest.unlabeled) and len(rest.val) == 1


def test_overlapping_lists_are_rejected(tmp_path):
    source = CityscapesSource(str(make_cityscapes(tmp_path / "cs", {"train": 2, "val": 1})))
    labeled = write_list(tmp_path / "l.txt", [cityscapes_line(0), cityscapes_line(1)])
    unlabeled = write_list(tmp_path / "u.txt", [cityscapes_line(1)])
    with pytest.raises(DatasetError, match="share 1 samples"):
        build_splits(source, {"labeled_list": labeled, "unlabeled_list": unlabeled})


def test_missing_split_file_names_it(tmp_path):
    source = CityscapesSource(str(make_cityscapes(tmp_path, {"train": 1})))
    with pytest.raises(DatasetError, match="split list not found: cityscapes/1_3/labeled.txt"):
        build_splits(source, {"labeled_list": "cityscapes/1_3/labeled.txt"})


@pytest.mark.parametrize("lines, message", [
    ([], "is empty"),
    ([cityscapes_line(0) + " extra"], r"l\.txt:1: expected 'IMAGE \[MASK\]'"),
    ([cityscapes_line(5)], "image listed in a split file not found: .*aachen_000005_000019_leftImg8bit.png"),
])
def test_bad_list_lines_name_the_file(tmp_path, lines, message):
    source = CityscapesSource(str(make_cityscapes(tmp_path / "cs", {"train": 1})))
    with pytest.raises(DatasetError, match=message):
        read_split_list(write_list(tmp_path / "l.txt", lines), source)


def test_listed_image_without_its_mask_names_both(tmp_path):
    root = make_cityscapes(tmp_path / "cs", {"train": 1}, label_ids=False, train_ids=False)
    with pytest.raises(DatasetError, match="aachen_000000_000019_leftImg8bit.png has no mask: expected .*labelIds"):
        read_split_list(write_list(tmp_path / "l.txt", [cityscapes_line(0)]), CityscapesSource(str(root)))
