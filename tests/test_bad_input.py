"""Bad input stops early and in one line: each case runs a console script as a subprocess and checks exit code 2,
exactly one ERROR line naming the key or file, no traceback, no training started, nothing already written
changed. A wrong type, an undeclared key or an unknown choice stops at composition (the schema, mckd/schema.py,
with Hydra's message); a value out of range, after it (mckd/pipeline/validate.py). Then the resume-identity check,
`resume_mismatch=allow`, and the one-writer-per-step lock directly."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fixtures import dataset_config, make_camvid, make_coco, save
from hydra import compose, initialize_config_module
from omegaconf import open_dict

from mckd.data.registry import build_source
from mckd.data.splits import build_splits
from mckd.pipeline.identity import differences, identity
from mckd.pipeline.lock import StepLockedError, lock_path, step_lock
from mckd.pipeline.validate import check_dataset


# -- what every case sets up -------------------------------------------------------------------------------------
def camvid(tmp: Path) -> Path:
    """6 train images (1 labeled at the preset's ratio 0.125, 5 unlabeled), 2 val; 11 classes."""
    return make_camvid(tmp / "camvid", n_train=6, n_val=2)


def corrupt_unlabeled_image(tmp: Path) -> None:
    root = camvid(tmp)
    (root / "train" / "0001TP_extra.png").write_bytes(b"not a png at all")  # no mask: always unlabeled


def val_mask_out_of_range(tmp: Path) -> None:
    root = camvid(tmp)
    save(np.full((36, 48), 12, dtype=np.uint8), root / "valannot" / "0001TP_val_0001.png")


def mask_size_mismatch(tmp: Path) -> None:
    root = camvid(tmp)
    save(np.zeros((30, 48), dtype=np.uint8), root / "valannot" / "0001TP_val_0000.png")


def val_image_without_mask(tmp: Path) -> None:
    (camvid(tmp) / "valannot" / "0001TP_val_0000.png").unlink()


def empty_images_folder(tmp: Path) -> None:
    root = camvid(tmp)
    for image in (root / "train").iterdir():
        image.unlink()


def truncated_coco_json(tmp: Path) -> None:
    root = make_coco(tmp / "coco", n_images=3)
    make_coco(root, n_images=2, split="val2017")
    ann = root / "annotations" / "instances_train2017.json"
    ann.write_text(ann.read_text()[:500])


def text_file_checkpoint(tmp: Path) -> None:
    (tmp / "teacher.ckpt").write_text("a text file, not a checkpoint\n")


def lock_held_here(tmp: Path) -> None:
    write_lock(tmp / "exp", "teacher", socket.gethostname(), os.getpid())


def lock_held_elsewhere(tmp: Path) -> None:
    write_lock(tmp / "exp", "teacher", "another-host.example", 1)


def write_lock(exp: Path, step: str, host: str, pid: int) -> None:
    path = lock_path(exp, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "started": "2026-01-01 00:00:00"}))


def other_checkpoint(tmp: Path) -> None:
    shutil.copy(tmp / "exp" / "checkpoints" / "teacher" / "best.ckpt", tmp / "other.ckpt")


CAMVID = ("dataset=camvid", "dataset.params.root={tmp}/camvid")
COCO_COUNTS = ("dataset=coco", "dataset.params.root={tmp}/coco", "dataset.split.labeled_list=null",
               "dataset.split.val_list=null", "dataset.split.num_labeled=1")


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # `{tmp}`: the case's directory; the experiment is {tmp}/exp
    names: tuple[str, ...]  # what the ERROR line must say
    setup: Callable[[Path], None] | None = None
    command: str = "mckd-train"
    resume: bool = False  # run on a copy of an existing (teacher-stage, synthetic) experiment
    composition: bool = False  # stopped while Hydra composes the config: no experiment directory is known yet
    with_checkpoint: bool = False  # {tmp}/synthetic.ckpt: that experiment's teacher


CASES = [
    # types, keys and choices: stopped by the schema while Hydra composes the config
    Case("num_stages=abc", ("num_stages=abc",), ("num_stages=abc", "could not be converted to Integer",
                                                 "full_key: num_stages"), composition=True),
    Case("num_stages=two", ("num_stages=two",), ("num_stages=two", "full_key: num_stages"), composition=True),
    Case("optim.lr=abc", ("optim.lr=abc",), ("optim.lr=abc", "could not be converted to Float"), composition=True),
    Case("optim.lrr=1", ("optim.lrr=1",), ("Key 'lrr' not in", "full_key: optim.lrr"), composition=True),
    Case("stage=frist", ("stage=frist",), ("stage=frist", "expected one of [all, teacher, pairs, final]",
                                           "full_key: stage"), composition=True),
    Case("seed=1.5", ("seed=1.5",), ("seed=1.5", "could not be converted to Integer"), composition=True),
    Case("unknown optimizer", ("optim.name=adam",), ("optim.name=adam", "[adamw, sgd]"), composition=True),
    Case("resume_mismatch=maybe", ("resume_mismatch=maybe",), ("resume_mismatch=maybe", "[stop, allow]"),
         composition=True),
    Case("crop_size=[64,x]", ("dataset.crop_size=[64,x]",), ("full_key: dataset.crop_size[1]",), composition=True),
    Case("unknown dataset", ("dataset=imagenet",), ("Could not find 'dataset/imagenet'", "camvid"),
         composition=True),
    Case("resume: bad type", ("optim.lr=abc",), ("optim.lr=abc",), resume=True, composition=True),
    Case("eval: split=tst", ("checkpoint=x.ckpt", "split=tst"), ("split=tst", "[val, test]"), command="mckd-eval"),
    Case("eval: flip=maybe", ("checkpoint=x.ckpt", "flip=maybe"), ("flip=maybe", "full_key: flip"),
         command="mckd-eval"),
    Case("predict: alpha=x", ("checkpoint=x.ckpt", "input=in", "output=out", "alpha=x"),
         ("alpha=x", "could not be converted to Float"), command="mckd-predict"),
    # config values: stopped by the Hydra callback before anything is written (and before torch loads)
    Case("num_stages=0", ("num_stages=0",), ("num_stages=0", "an integer >= 1")),
    Case("num_partitions=1", ("num_partitions=1",), ("num_partitions=1", "at least 2")),
    Case("member=z", ("stage=pairs", "member=z"), ("member='z'", "a, b")),
    Case("pair_stage out of range", ("pair_stage=3",), ("pair_stage=3", "1..1")),
    Case("negative labeled_weight", ("labeled_weight=-1",), ("labeled_weight=-1", ">= 0")),
    Case("confidence_threshold=2", ("pseudo.confidence_threshold=2",), ("pseudo.confidence_threshold=2", "< 1")),
    Case("teacher_epochs=0", ("train.teacher_epochs=0",), ("train.teacher_epochs=0", ">= 1")),
    Case("batch_size=0", ("dataset.batch_size=0",), ("dataset.batch_size=0", ">= 1")),
    Case("cutmix_prob=1.5", ("student_aug.cutmix_prob=1.5",), ("student_aug.cutmix_prob=1.5", "[0, 1]")),
    Case("soft loss without soft labels", ("student_loss.soft_weight=1",), ("student_loss.soft_weight=1", "soft_topk")),
    Case("warm start with repartition", ("num_stages=3", "warm_start=true", "repartition=true"),
         ("warm_start=true with repartition=true", "set one of them false")),
    Case("partition_group not a regex", ("partition_group='[a-'",), ("partition_group='[a-'", "regular expression")),
    Case("crop_size=[64]", ("dataset.crop_size=[64]",), ("dataset.crop_size=[64]", "[height, width]")),
    Case("missing teacher_checkpoint", ("teacher_checkpoint={tmp}/nowhere.ckpt",),
         ("teacher_checkpoint={tmp}/nowhere.ckpt", "file not found")),
    Case("missing teacher.checkpoint (old spelling)", ("teacher.checkpoint={tmp}/nowhere.ckpt",),
         ("teacher.checkpoint={tmp}/nowhere.ckpt", "file not found")),
    Case("folder dataset without root", ("dataset=folder", "dataset.params.class_names=[a,b]"),
         ("dataset.params.root is not set",)),
    # the dataset: stopped before torch loads
    Case("missing dataset root", ("dataset=camvid", "dataset.params.root={tmp}/nowhere"),
         ("dataset.params.root={tmp}/nowhere", "directory not found")),
    Case("empty images folder", CAMVID, ("dataset.params.root={tmp}/camvid", "no images in {tmp}/camvid/train"),
         empty_images_folder),
    Case("corrupt unlabeled image", CAMVID, ("{tmp}/camvid/train/0001TP_extra.png", "cannot open image"),
         corrupt_unlabeled_image),
    Case("mask value out of range", CAMVID, ("{tmp}/camvid/valannot/0001TP_val_0001.png", "values [12]"),
         val_mask_out_of_range),
    Case("mask size differs from image", CAMVID, ("{tmp}/camvid/valannot/0001TP_val_0000.png", "differs"),
         mask_size_mismatch),
    Case("val image without mask", CAMVID, ("{tmp}/camvid/val/0001TP_val_0000.png", "needs ground truth"),
         val_image_without_mask),
    Case("num_partitions > unlabeled images", (*CAMVID, "num_partitions=9"), ("num_partitions=9", "1..5"), camvid),
    Case("fewer groups than partitions", (*CAMVID, "partition_group='^(0001TP)_'"), ("partition_group=", "1 groups"),
         camvid),
    Case("num_labeled > train images", (*CAMVID, "dataset.split.num_labeled=100"),
         ("dataset.split.num_labeled=100", "1..6"), camvid),
    Case("unknown dataset kind", ("dataset.kind=imagenet",), ("dataset.kind='imagenet'",)),
    Case("truncated COCO annotations", COCO_COUNTS, ("{tmp}/coco/annotations/instances_train2017.json",
                                                     "not valid JSON"), truncated_coco_json),
    Case("truncated COCO annotations (prepare)", ("{tmp}/coco", "--split", "train2017", "--workers", "1"),
         ("{tmp}/coco/annotations/instances_train2017.json", "not valid JSON"), truncated_coco_json,
         command="mckd-prepare-coco"),
    # models and the teacher checkpoint: built / loaded on the CPU before training
    Case("unknown student encoder", ("student.encoder=nope",), ("student.encoder='nope'", "unknown encoder")),
    Case("unknown teacher arch", ("teacher.arch=NoSuchNet",), ("teacher.arch='NoSuchNet'", "unknown architecture")),
    Case("missing encoder weights file", ("student.encoder_weights={tmp}/w.pth",),
         ("student.encoder_weights='{tmp}/w.pth'", "file not found")),
    Case("text file as teacher_checkpoint", ("teacher_checkpoint={tmp}/teacher.ckpt",),
         ("teacher_checkpoint={tmp}/teacher.ckpt", "is not an mckd checkpoint"), text_file_checkpoint),
    Case("teacher_checkpoint of another dataset", (*CAMVID, "teacher_checkpoint={tmp}/synthetic.ckpt"),
         ("{tmp}/synthetic.ckpt predicts 6 classes", "camvid has 11"), camvid, with_checkpoint=True),
    # one writer per step
    Case("double run: lock held on this host", ("stage=teacher",), ("step teacher is being run by pid", "teacher.lock"),
         lock_held_here),
    Case("lock held on another host", ("stage=teacher",), ("another-host.example", "never taken over", "by hand"),
         lock_held_elsewhere),
    # resuming an existing experiment with other settings
    Case("resume: num_stages", ("num_stages=3",), ("num_stages=2 there, 3 now", "resume_mismatch=allow"),
         resume=True),
    Case("resume: two keys", ("optim.lr=0.01", "seed=1"), ("optim.lr=0.002 there, 0.01 now", "seed=0 there, 1 now"),
         resume=True),
    Case("resume: dataset param", ("dataset.params.num_train=400",),
         ("dataset.params.num_train=500 there, 400 now",), resume=True),
    Case("resume: teacher_checkpoint", ("teacher_checkpoint={tmp}/other.ckpt",),
         ("teacher_checkpoint='trained here' there, '{tmp}/other.ckpt' now",), other_checkpoint, resume=True),
    Case("teacher_checkpoint and its old spelling differ", ("teacher_checkpoint={tmp}/a.ckpt",
                                                          "teacher.checkpoint={tmp}/b.ckpt"),
         ("teacher_checkpoint={tmp}/a.ckpt and teacher.checkpoint={tmp}/b.ckpt differ",)),
    Case("resume: bad value", ("optim.lr=-1",), ("optim.lr=-1", "a number > 0"), resume=True),
    # mckd-eval with a dataset config that interpolates ${seed}
    Case("eval: checkpoint of another dataset", ("checkpoint={tmp}/exp/checkpoints/teacher/best.ckpt", *CAMVID),
         ("predicts 6 classes", "camvid has 11"), camvid, command="mckd-eval", resume=True),
]


# -- running and checking ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def experiment(tmp_path_factory, mckd_cli) -> Path:
    """A synthetic smoke experiment whose teacher step has finished (K=2, N=2, seed 0, lr 0.002)."""
    exp = tmp_path_factory.mktemp("existing") / "exp"
    mckd_cli("mckd-train", "debug=smoke", "stage=teacher", f"hydra.run.dir={exp}")
    return exp


def checksums(directory: Path) -> dict[str, str]:
    """Every file's content hash, but the log that an error is appended to."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "cli.log"}


def error_lines(proc: subprocess.CompletedProcess, command: str) -> list[str]:
    """Lines at level ERROR: mckd-train's log format shows the level; mckd-eval's lines are bare ("error: ...")."""
    return [line for line in (proc.stdout + proc.stderr).splitlines()
            if "[ERROR]" in line or line.startswith(("error: ", f"{command}: error:"))]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_stops_in_one_line(case: Case, tmp_path: Path, mckd_cli, request) -> None:
    exp = tmp_path / "exp"
    if case.resume:
        shutil.copytree(request.getfixturevalue("experiment"), exp)
    if case.with_checkpoint:
        shutil.copy(request.getfixturevalue("experiment") / "checkpoints" / "teacher" / "best.ckpt",
                    tmp_path / "synthetic.ckpt")
    if case.setup:
        case.setup(tmp_path)
    before = checksums(exp) if exp.is_dir() else {}
    args = [a.format(tmp=tmp_path) for a in case.args]
    if case.command == "mckd-train":
        args = ["debug=smoke", f"hydra.run.dir={exp}", *args]
    proc = mckd_cli(case.command, *args, check=False, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = error_lines(proc, case.command)
    assert len(lines) == 1, output[-3000:]
    for name in case.names:
        assert name.format(tmp=tmp_path) in lines[0], lines[0]
    if case.command != "mckd-train":
        return
    if not case.resume:
        assert not (exp / "checkpoints").exists()
    after = checksums(exp)
    assert {path: after.get(path) for path in before} == before  # nothing already written changed
    if case.composition:  # stopped before the experiment directory is known: nothing written there
        assert after == before and (case.resume or not exp.exists())
    else:
        assert lines[0].split("] - ", 1)[1] in (exp / "cli.log").read_text()


def make_read_only(directory: Path) -> Callable[[], None]:
    """Make `directory` unwritable, also for root (chattr +i); returns the undo. Skips where neither works."""
    directory.chmod(0o555)
    if os.access(directory, os.W_OK):  # root ignores permission bits
        if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
            directory.chmod(0o755)
            pytest.skip("cannot make a directory read-only here (root without chattr)")
        return lambda: subprocess.run(["chattr", "-i", str(directory)], check=True)
    return lambda: directory.chmod(0o755)


def test_read_only_experiment_directory(tmp_path: Path, mckd_cli) -> None:
    exp = tmp_path / "exp"
    exp.mkdir()
    undo = make_read_only(exp)
    try:
        proc = mckd_cli("mckd-train", "debug=smoke", f"hydra.run.dir={exp}", check=False, cwd=tmp_path)
    finally:
        undo()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output[-3000:]
    (line,) = error_lines(proc, "mckd-train")
    assert f"experiment_dir={exp}: cannot write there" in line
    assert list(exp.iterdir()) == []


# -- resuming --------------------------------------------------------------------------------------------------
def train_config(*overrides: str):
    with initialize_config_module("mckd.conf", version_base="1.3"):
        return compose("train", overrides=["experiment_dir=unused", *overrides])


def test_identity_is_whole_nodes_without_speed_keys() -> None:
    cfg = train_config()
    for node, key in (("student_aug", "brand_new"), ("pseudo", "another"), ("train", "warmup_epochs")):
        with open_dict(cfg[node]):  # a key added to the schema later
            cfg[node][key] = 1
    keys = identity(cfg)
    assert {"student_aug.brand_new", "pseudo.another", "train.warmup_epochs", "num_stages", "dataset.params.num_train",
            "student.encoder", "teacher.arch", "optim.lr", "loss.ce_weight", "labeled_weight", "labeled_fraction",
            "warm_start"} <= set(keys)
    assert not {k for k in keys if k.split(".")[0] in ("trainer", "logger", "stage", "member", "pair_stage",
                                                       "experiment_dir", "resume_mismatch", "eval")}
    assert not {"dataset.num_workers", "dataset.eval_batch_size", "teacher.checkpoint", "teacher_checkpoint"} & set(keys)


def test_a_key_added_since_with_a_null_value_is_no_mismatch(tmp_path: Path) -> None:
    """An experiment started before a key existed resumes when the key is null now (what its absence meant)."""
    cfg = train_config("train.ema_decay=null")
    stored = {k: v for k, v in identity(cfg).items() if k != "train.ema_decay"}
    (tmp_path / "identity.json").write_text(json.dumps(stored))
    assert differences(cfg, tmp_path) == []
    assert [key for key, _, _ in differences(train_config("train.ema_decay=0.99"), tmp_path)] == ["train.ema_decay"]


def test_resume_mismatch_allow_goes_on(experiment: Path, tmp_path: Path, mckd_cli) -> None:
    exp = tmp_path / "exp"
    shutil.copytree(experiment, exp)
    stored = (exp / "identity.json").read_text()
    proc = mckd_cli("mckd-train", "debug=smoke", "stage=teacher", "num_stages=3", "resume_mismatch=allow",
                    f"hydra.run.dir={exp}", cwd=tmp_path)
    warnings = [line for line in proc.stdout.splitlines() if "[WARNING]" in line and "resume_mismatch=allow" in line]
    assert len(warnings) == 1 and "num_stages=2 there, 3 now" in warnings[0]
    assert (exp / "identity.json").read_text() == stored  # the first run's identity stays


# -- one writer per step ---------------------------------------------------------------------------------------
def test_pair_members_lock_different_steps(tmp_path: Path) -> None:
    with step_lock(tmp_path, "stage1-a"), step_lock(tmp_path, "stage1-b"):
        assert lock_path(tmp_path, "stage1-a").is_file() and lock_path(tmp_path, "stage1-b").is_file()
        with pytest.raises(StepLockedError, match=f"step stage1-a is being run by pid {os.getpid()}"), \
                step_lock(tmp_path, "stage1-a"):
            pass
    assert not lock_path(tmp_path, "stage1-a").exists() and not lock_path(tmp_path, "stage1-b").exists()


def test_stale_lock_of_this_host_is_taken_over_once(tmp_path: Path, caplog) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_lock(tmp_path, "final", socket.gethostname(), gone.pid)
    with caplog.at_level(logging.WARNING, logger="mckd"), step_lock(tmp_path, "final"):
        assert json.loads(lock_path(tmp_path, "final").read_text())["pid"] == os.getpid()
    assert [r.levelname for r in caplog.records] == ["WARNING"] and f"pid {gone.pid}" in caplog.text


def test_lock_of_another_host_or_without_holder_is_never_taken_over(tmp_path: Path) -> None:
    write_lock(tmp_path, "teacher", "another-host.example", 999999)
    with pytest.raises(StepLockedError, match="never taken over automatically"), step_lock(tmp_path, "teacher"):
        pass
    lock_path(tmp_path, "label-stage0").write_text("")  # its writer died between creating and writing it
    with pytest.raises(StepLockedError, match="names no holder"), step_lock(tmp_path, "label-stage0"):
        pass
    assert lock_path(tmp_path, "teacher").is_file() and lock_path(tmp_path, "label-stage0").is_file()


# -- the folder reader -----------------------------------------------------------------------------------------
def test_unlabeled_images_may_have_no_mask(tmp_path: Path) -> None:
    root = camvid(tmp_path)
    for i in range(3):
        save(np.zeros((36, 48, 3), dtype=np.uint8), root / "train" / f"0002TP_nomask_{i}.png")
    splits = build_splits(build_source(dataset_config("camvid", root)), {"labeled_ratio": 0.5, "seed": 0})
    assert len(splits.labeled) == 4 and all(s.mask for s in splits.labeled)  # half of 9, from the 6 with masks
    assert sum(s.mask is None for s in splits.unlabeled) == 3
    cfg = train_config("dataset=camvid", f"dataset.params.root={root}", "debug=smoke")
    assert check_dataset(cfg) == 11


def test_a_member_leaves_cross_labeling_to_the_process_that_holds_its_lock(tmp_path: Path) -> None:
    """Two pair members that finish together both reach cross-labeling: the second returns without labeling."""
    from test_pipeline import compose_train

    from mckd.cli import run_pipeline

    exp = tmp_path / "exp"
    run_pipeline(compose_train("debug=smoke", f"experiment_dir={exp}", "member=a"))
    with step_lock(exp, "label-stage1"):  # as if member a's process were cross-labeling right now
        run_pipeline(compose_train("debug=smoke", f"experiment_dir={exp}", "stage=pairs", "member=b"))
    assert (exp / "steps" / "stage1-b.json").is_file() and not (exp / "steps" / "label-stage1.json").exists()
    run_pipeline(compose_train("debug=smoke", f"experiment_dir={exp}", "stage=pairs"))
    assert (exp / "steps" / "label-stage1.json").is_file()
