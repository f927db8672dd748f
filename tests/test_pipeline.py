"""The MCKD pipeline: partitions, pseudo-label store, cross-labeling, end to end, resume, DDP, sweeps."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torchvision.transforms import v2

import mckd
from mckd.cli import run_pipeline
from mckd.data import Sample, SegmentationData
from mckd.data.synthetic import CLASS_NAMES
from mckd.layout import FINAL, TEACHER, student_names
from mckd.modules import StudentModule
from mckd.pipeline.partition import PartitionError, partition, stage_partitions
from mckd.pipeline.results import results_markdown, verdicts
from mckd.pipeline.store import IncompleteStageError, PseudoLabelStore

CONF = str(Path(mckd.__file__).parent / "conf")
BIN = Path(sys.executable).parent


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def smoke(exp: Path, *overrides: str) -> dict:
    """Run the pipeline in this process with debug=smoke; returns results.json's content."""
    run_pipeline(compose_train("debug=smoke", f"experiment_dir={exp}", *overrides))
    return json.loads((exp / "results.json").read_text())


def samples(n: int) -> list[Sample]:
    return [Sample(f"img_{i:03d}", f"img_{i:03d}.png") for i in range(n)]


# -- student noise ---------------------------------------------------------------------------------
def scale_and_jitter(transform) -> tuple[tuple[float, float], bool]:
    scale = next(t.scale_range for t in transform.transforms if isinstance(t, v2.ScaleJitter))
    steps = [inner for t in transform.transforms for inner in getattr(t, "transforms", [t])]  # inside RandomApply
    return tuple(scale), any(isinstance(t, v2.ColorJitter) for t in steps)


@pytest.mark.parametrize("overrides, expected", [
    ((), ((0.75, 1.5), True)),  # default: the dataset's own scale range, ST++/UniMatch's colour jitter
    (("student_aug.scale_range=[0.5,1.75]", "student_aug.color_jitter=0"), ((0.5, 1.75), False)),
])
def test_student_augmentation_keeps_the_datasets_scale_and_adds_strong_noise_unless_told(overrides, expected):
    cfg = compose_train("dataset.scale_range=[0.75,1.5]", *overrides)
    data = SegmentationData.build(cfg.dataset)
    assert scale_and_jitter(data.train_transform(cfg.student_aug)) == expected
    assert scale_and_jitter(data.train_transform()) == ((0.75, 1.5), False)  # the teacher's


# -- partitioner -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n, parts", [(10, 2), (11, 3), (7, 7)])
def test_partitions_disjoint_covering_deterministic(n, parts):
    result = partition(samples(n), parts, seed=3)
    ids = [s.id for part in result for s in part]
    assert sorted(ids) == sorted(s.id for s in samples(n))  # covering, and disjoint (no repeats)
    assert len(set(ids)) == n
    assert max(map(len, result)) - min(map(len, result)) <= 1
    assert result == partition(list(reversed(samples(n))), parts, seed=3)  # input order does not matter


def test_partitions_fixed_across_stages_unless_repartition():
    pool = samples(40)
    assert stage_partitions(pool, 2, 0, 1, False) == stage_partitions(pool, 2, 0, 2, False)
    assert stage_partitions(pool, 2, 0, 1, True) != stage_partitions(pool, 2, 0, 2, True)


def video_frames() -> list[Sample]:
    """CamVid-like ids: sequence, underscore, frame number; sequences of 9, 5, 4 and 2 frames."""
    return [Sample(f"{seq}_{f:05d}", "") for seq, n in (("0016E5", 9), ("0006R0", 5), ("Seq05VD", 4), ("0001TP", 2))
            for f in range(0, 30 * n, 30)]


@pytest.mark.parametrize("parts", [2, 3])
def test_grouped_partitions_keep_each_sequence_whole(parts):
    pool = video_frames()
    result = stage_partitions(pool, parts, 0, 1, False, group=r"^([^_]+)_")
    assert sorted(s.id for part in result for s in part) == sorted(s.id for s in pool)
    sequences = [{s.id.split("_")[0] for s in part} for part in result]
    assert all(sequences) and sum(map(len, sequences)) == 4  # no sequence in two partitions, none empty
    assert max(map(len, result)) - min(map(len, result)) <= 5  # largest sequence first, then to the smallest
    assert result == stage_partitions(list(reversed(pool)), parts, 0, 2, False, group=r"^([^_]+)_")


def test_grouped_partitions_fail_clearly():
    with pytest.raises(PartitionError, match="finds 4 groups"):
        stage_partitions(video_frames(), 5, 0, 1, False, group=r"^([^_]+)_")
    with pytest.raises(PartitionError, match="does not match the unlabeled sample id 'img_000'"):
        stage_partitions(samples(4), 2, 0, 1, False, group=r"^(\d+)_")


def test_pipeline_partitions_by_group(tmp_path):
    """partition_group reaches the pipeline: ids train_0000x, train_0001x, ... stay together by tens."""
    exp = tmp_path / "exp"
    smoke(exp, "partition_group='^train_(\\d{4})'")
    manifest = json.loads((exp / "pseudo_labels" / "stage1" / "manifest.json").read_text())
    tens = [{i[:-1] for i in part["ids"]} for part in manifest["partitions"]]
    assert not tens[0] & tens[1] and all(tens)
    check_cross_labeling(exp, 2, 2)


def test_partitions_same_in_every_process():
    code = ("from mckd.pipeline.partition import partition; from mckd.data import Sample;"
            "print([[s.id for s in p] for p in partition([Sample(f'img_{i:03d}', '') for i in range(25)], 3, 7)])")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == str([[s.id for s in p] for p in partition(samples(25), 3, 7)])


# -- store -----------------------------------------------------------------------------------------
def test_store_round_trips_hard_and_soft_labels(tmp_path):
    store = PseudoLabelStore(tmp_path, num_classes=7)
    rng = np.random.default_rng(0)
    label = rng.integers(0, 7, (20, 30))
    conf = rng.uniform(0, 1, (20, 30))
    ids, probs = rng.integers(0, 7, (3, 20, 30)), rng.uniform(0, 1, (3, 20, 30))
    store.write_sample(1, "a", label, conf, ids, probs)
    store.write_manifest(1, {"partitions": [{"index": 0, "ids": ["a"], "labeled_by": ["x"]}]})
    got = store.reader(1).read("a")
    assert got["label"].dtype == np.uint8 and np.array_equal(got["label"], label)
    assert np.abs(got["confidence"] / 255.0 - conf).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(got["soft_ids"], ids)
    assert np.allclose(got["soft_probs"], probs, atol=1e-3)


def test_store_uses_uint16_past_255_classes(tmp_path):
    store = PseudoLabelStore(tmp_path, num_classes=300)
    label = np.full((4, 5), 299)
    store.write_sample(0, "a", label, np.ones((4, 5)))
    store.write_manifest(0, {"partitions": [{"index": 0, "ids": ["a"], "labeled_by": ["t"]}]})
    assert np.array_equal(store.reader(0).read("a")["label"], label)


def test_store_killed_write_is_never_complete(tmp_path, monkeypatch):
    store = PseudoLabelStore(tmp_path, num_classes=3)
    store.write_sample(0, "a", np.zeros((4, 4)), np.ones((4, 4)))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies while encoding the second label

    monkeypatch.setattr("mckd.pipeline.store.png_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write_sample(0, "b", np.zeros((4, 4)), np.ones((4, 4)))
    monkeypatch.undo()
    assert not list(store.stage_dir(0).rglob("*.tmp"))  # no torn files left behind
    assert store.missing(0, ["a", "b"]) == ["b"]
    manifest = {"partitions": [{"index": 0, "ids": ["a", "b"], "labeled_by": ["t"]}]}
    with pytest.raises(IncompleteStageError, match="missing"):
        store.write_manifest(0, manifest)
    with pytest.raises(IncompleteStageError, match="stage 0"):
        store.reader(0)


# -- end to end ------------------------------------------------------------------------------------
def check_cross_labeling(exp: Path, num_stages: int, num_partitions: int) -> None:
    """No student ever labels a sample it trained on, read from the manifests alone."""
    for k in range(1, num_stages):
        manifest = json.loads((exp / "pseudo_labels" / f"stage{k}" / "manifest.json").read_text())
        trained_ids = {name: set(manifest["partitions"][i]["ids"]) for name, i in manifest["trained_on"].items()}
        assert sorted(trained_ids) == student_names(k, num_partitions)
        for part in manifest["partitions"]:
            assert len(part["labeled_by"]) == num_partitions - 1
            for name in part["labeled_by"]:
                assert not trained_ids[name] & set(part["ids"]), f"{name} labels samples it trained on"


@pytest.mark.parametrize("num_stages, num_partitions", [(2, 2), pytest.param(3, 3, marks=pytest.mark.slow)])
def test_end_to_end(tmp_path, num_stages, num_partitions):
    exp = tmp_path / "exp"
    res = smoke(exp, f"num_stages={num_stages}", f"num_partitions={num_partitions}", "train.final_epochs=2")
    assert 0 <= res["teacher"]["val_miou"] <= 1 and 0 <= res["teacher"]["pseudo_label_miou"] <= 1
    assert [s["stage"] for s in res["stages"]] == list(range(1, num_stages))
    for stage in res["stages"]:
        assert [s["name"] for s in stage["students"]] == student_names(stage["stage"], num_partitions)
        assert all(0 <= s["val_miou"] <= 1 and s["test_miou"] is None for s in stage["students"])
        assert 0 <= stage["pseudo_label_miou"] <= 1
    assert 0 <= res["final"]["val_miou"] <= 1
    for path in ["results.md", "stages.png", "checkpoints/final/best.ckpt", "checkpoints/teacher/last.ckpt",
                 "logs/teacher/version_0/metrics.csv", "pseudo_labels/stage0/manifest.json"]:
        assert (exp / path).is_file(), path
    for k in range(num_stages):
        manifest = json.loads((exp / "pseudo_labels" / f"stage{k}" / "manifest.json").read_text())
        assert manifest["complete"] and manifest["num_samples"] == 12  # debug=smoke: 12 unlabeled
        assert len(list((exp / "pseudo_labels" / f"stage{k}" / "labels").glob("*.png"))) == 12
        record = json.loads((exp / "steps" / f"label-stage{k}.json").read_text())
        per_class = record["pseudo_label_per_class_iou"]  # which classes the labels keep or lose, stage by stage
        assert list(per_class) == list(CLASS_NAMES) and np.nanmean(list(per_class.values())) == pytest.approx(record["pseudo_label_miou"])
    check_cross_labeling(exp, num_stages, num_partitions)
    check_last_epoch_reported(exp, res)


def check_last_epoch_reported(exp: Path, res: dict) -> None:
    """The final student's record: best.ckpt's val mIoU is the best epoch's, and `last_val_miou` the last
    epoch's, as its CSV log shows them during training (the rows of the evaluations after it carry the epoch
    count); results.md has both."""
    with open(exp / "logs" / "final" / "version_0" / "metrics.csv") as f:
        rows = [(int(row["epoch"]), float(row["val/miou"])) for row in csv.DictReader(f) if row["val/miou"]]
    during_training = [miou for epoch, miou in rows if epoch < max(e for e, _ in rows)]
    assert len(during_training) == 2  # train.final_epochs=2
    assert res["final"]["last_val_miou"] == pytest.approx(during_training[-1], abs=1e-4)
    assert res["final"]["val_miou"] == pytest.approx(max(during_training), abs=1e-4)
    table = (exp / "results.md").read_text()
    assert f"| final | {res['final']['val_miou']:.4f} | {res['final']['last_val_miou']:.4f} |" in table


def test_soft_labels_and_threshold_run(tmp_path):
    res = smoke(tmp_path / "exp", "pseudo.soft_topk=2", "student_loss.soft_weight=1.0",
                "pseudo.confidence_threshold=0.3", "student_aug.cutmix_prob=1.0", "warm_start=true")
    assert res["final"]["val_miou"] is not None
    assert len(list((tmp_path / "exp" / "pseudo_labels" / "stage1" / "soft").glob("*.npz"))) == 12


def test_steps_fail_clearly_without_earlier_steps(tmp_path):
    with pytest.raises(IncompleteStageError, match="stage 0"):
        smoke(tmp_path / "exp", "stage=pairs")


def test_resume_after_failure_skips_finished_steps(tmp_path, monkeypatch, caplog):
    exp = tmp_path / "exp"
    original = StudentModule.training_step

    def failing(self, batch, batch_idx):
        if self.hparams.name == "stage1-b" and self.current_epoch == 1:
            raise RuntimeError("injected failure")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(StudentModule, "training_step", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        smoke(exp, "train.student_epochs=2")
    last = exp / "checkpoints" / "stage1-b" / "last.ckpt"
    assert last.is_file()
    assert not (exp / "steps" / "stage1-b.json").exists()
    steps_per_epoch = torch.load(last, weights_only=False)["global_step"]  # the epoch finished before the failure
    finished = ["steps/teacher.json", "steps/label-stage0.json", "steps/stage1-a.json",
                "pseudo_labels/stage0/manifest.json", "checkpoints/teacher/best.ckpt"]
    before = {p: (exp / p).stat().st_mtime_ns for p in finished}

    trained: list[str] = []

    def counting(self, batch, batch_idx):
        trained.append(self.hparams.name)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(StudentModule, "training_step", counting)
    with caplog.at_level(logging.INFO, logger="mckd"):
        res = smoke(exp, "train.student_epochs=2")
    assert {p: (exp / p).stat().st_mtime_ns for p in finished} == before  # nothing redone
    assert "stage1-b: training for 2 epochs, resuming from" in caplog.text
    assert steps_per_epoch > 0 and trained.count("stage1-b") == steps_per_epoch  # only the missing epoch
    assert torch.load(last, weights_only=False)["global_step"] == 2 * steps_per_epoch
    assert res["final"] is not None and len(res["stages"][0]["students"]) == 2

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mckd"):
        smoke(exp, "train.student_epochs=2")  # finished: only reports
    assert "training for" not in caplog.text and "labels" not in caplog.text.replace("pseudo-labels", "")


@pytest.mark.slow  # the default suite runs members as parallel processes in test_reproducible.py
def test_pair_members_as_separate_jobs(tmp_path):
    exp = tmp_path / "exp"
    smoke(exp, "stage=teacher")
    res = smoke(exp, "stage=pairs", "member=a")
    assert not (exp / "pseudo_labels" / "stage1" / "manifest.json").exists()  # waits for member b
    assert [s["name"] for s in res["stages"][0]["students"]] == ["stage1-a"]
    smoke(exp, "stage=pairs", "member=b")
    assert (exp / "pseudo_labels" / "stage1" / "manifest.json").is_file()
    assert smoke(exp, "stage=final")["final"] is not None


def test_old_spellings_on_the_command_line_are_renamed(monkeypatch):
    """`student=a` means `member=a` and `stage=first` means `stage=pairs` (deprecated; mckd-train warns of each, and
    tests/test_schema.py runs one): renamed in argv, so that the schema's Stage does not list `first`."""
    from mckd import cli

    monkeypatch.setattr(cli, "DEPRECATED_ARGS", [])
    assert cli.rename_deprecated(["stage=first", "student=b", "model@student=unet_resnet18", "student.encoder=x",
                                  "pair_stage=1"]) == [
        "stage=pairs", "member=b", "model@student=unet_resnet18", "student.encoder=x", "pair_stage=1"]
    assert cli.DEPRECATED_ARGS == ["stage=first (use stage=pairs)", "student=b (use member=b)"]


def test_teacher_checkpoint_has_a_deprecated_spelling(caplog):
    from mckd.pipeline.identity import teacher_checkpoint
    from mckd.pipeline.validate import warn_deprecated_keys

    assert teacher_checkpoint(compose_train("teacher_checkpoint=t.ckpt")) == ("teacher_checkpoint", "t.ckpt")
    assert teacher_checkpoint(compose_train()) == ("teacher_checkpoint", None)
    old = compose_train("teacher.checkpoint=t.ckpt")
    assert teacher_checkpoint(old) == ("teacher.checkpoint", "t.ckpt")
    with caplog.at_level("WARNING", logger="mckd"):
        warn_deprecated_keys(old)
    assert [r.getMessage() for r in caplog.records] == [
        "teacher.checkpoint is deprecated and will be removed in the next release: use teacher_checkpoint"]


# -- CLI: DDP, sweeps ------------------------------------------------------------------------------
def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"WANDB_MODE": "disabled", "CI": "true", "PATH": str(BIN) + ":/usr/bin:/bin"}
    proc = subprocess.run([str(BIN / "mckd-train"), *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.parametrize("match_shares", [False, True])
def test_ddp_cpu_labels_equal_single_process(tmp_path, match_shares):
    """Two ranks label as one process does; with pseudo.match_class_shares the offsets are fitted on every
    rank's pixels together (gathered), as one process fits them on all."""
    from mckd.data import PredictDataModule
    from mckd.modules import Labeler, SegmentationModule
    from mckd.modules.inference import share_matching_offsets
    from mckd.pipeline.labeling import PseudoLabelWriter
    from mckd.visualize import class_counts

    exp = tmp_path / "exp"
    run_cli(tmp_path, "stage=teacher", "debug=smoke", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.precision=32-true", "trainer.sync_batchnorm=false", f"hydra.run.dir={exp}",
            f"pseudo.match_class_shares={str(match_shares).lower()}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # one experiment directory, not one per rank
    manifest = json.loads((exp / "pseudo_labels" / "stage0" / "manifest.json").read_text())
    ids = manifest["partitions"][0]["ids"]
    assert manifest["complete"] and len(ids) == 12

    cfg = compose_train("debug=smoke", f"experiment_dir={exp}")
    data = SegmentationData.build(cfg.dataset)
    dm = PredictDataModule(data, data.splits.unlabeled)
    single = PseudoLabelStore(tmp_path / "single", dm.num_classes)
    teacher = SegmentationModule.from_checkpoint(str(exp / "checkpoints" / "teacher" / "best.ckpt")).net
    import lightning as L

    labeler = Labeler([teacher], flip=True, scales=cfg.pseudo.scales)
    if match_shares:
        labeler.sample_pixels = True
        batches = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False).predict(labeler, dm)
        shares = class_counts((data.source.read_mask(s) for s in data.splits.labeled), data.num_classes)
        labeler.sample_pixels = False
        labeler.offsets = share_matching_offsets(torch.cat([g for b in batches for g in b]), torch.tensor(shares))
        assert labeler.offsets.abs().max() > 0.1  # the teacher's own labels are far from those shares
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
              callbacks=[PseudoLabelWriter(single, 0)]).predict(labeler, datamodule=dm, return_predictions=False)
    ddp = PseudoLabelStore(exp / "pseudo_labels", dm.num_classes)
    for sample_id in ids:
        a = ddp.stage_dir(0) / "labels" / f"{sample_id}.png"
        b = single.stage_dir(0) / "labels" / f"{sample_id}.png"
        from PIL import Image

        la, lb = np.asarray(Image.open(a)), np.asarray(Image.open(b))
        assert (la == lb).mean() > 0.999, sample_id  # equal up to float reduction order at exact ties


@pytest.mark.slow  # 35 s; make test-all runs it
def test_multirun_sweep_summary(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(tmp_path, "-m", "num_stages=1,2", "debug=smoke", f"hydra.sweep.dir={sweep}")
    rows = json.loads((sweep / "summary.json").read_text())
    assert len(rows) == 2 and all(r["final_val_miou"] is not None for r in rows)
    assert [len(r["pseudo_label_miou"]) for r in rows] == [1, 2]
    assert (sweep / "summary.md").is_file()


def test_results_table_shows_the_last_epoch_beside_the_picked_one() -> None:
    model = {"val_miou": 0.6, "last_val_miou": 0.55, "test_miou": None, "wall_time_s": 10.0}
    results = {TEACHER: {**model, "pseudo_label_miou": 0.4, "label_wall_time_s": 2.0}, "stages": [],
               FINAL: {**model, "val_miou": 0.7, "last_val_miou": 0.65}, "experiment": "e", "dataset": "d",
               "num_stages": 1, "num_partitions": 2}
    table = results_markdown(results)
    assert "| step | val mIoU | last epoch | test mIoU | pseudo-label mIoU | seconds |" in table
    assert "| teacher | 0.6000 | 0.5500 | - | 0.4000 | 12 |" in table
    assert "| final | 0.7000 | 0.6500 | - |  | 10 |" in table


def test_verdicts_compare_the_final_student_with_the_teacher_once() -> None:
    """Vanilla KD (no pair stage) gets one final-vs-teacher line; MCKD gets the stage lines and both final lines."""
    teacher = {"val_miou": 0.5, "pseudo_label_miou": 0.4}
    final = {"val_miou": 0.6}
    vanilla = verdicts({TEACHER: teacher, "stages": [], FINAL: final})
    assert vanilla == ["final student val mIoU vs teacher: 0.5000 -> 0.6000 (+0.1000)"]
    stage = {"stage": 1, "pseudo_label_miou": 0.45, "students": [{"val_miou": 0.55}, {"val_miou": 0.57}]}
    with_pairs = verdicts({TEACHER: teacher, "stages": [stage], FINAL: final})
    assert [line.split(":")[0] for line in with_pairs] == [
        "stage 1 pseudo-labels vs teacher's", "stage 1 students' mean val mIoU vs teacher",
        "final student val mIoU vs stage 1", "final student vs teacher val mIoU"]
