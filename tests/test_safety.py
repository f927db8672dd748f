"""Failures and untrusted files: weights-only loading, torn checkpoints, strict JSON, file modes, resumed CSV logs."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image
from test_pipeline import compose_train, smoke

from mckd.atomic import atomic_write, current_umask, write_json
from mckd.checkpoints import ClassCountError, NotACheckpointError, read_checkpoint
from mckd.cli import run_pipeline
from mckd.evaluate import evaluate
from mckd.models import model_config
from mckd.modules import SegmentationModule
from mckd.pipeline.lightning_io import AtomicCheckpointIO, keep_rows_before
from mckd.pipeline.orchestrator import Pipeline
from mckd.predict import predict


class OpensAFile:
    """Unpickling this creates `path`: what a malicious checkpoint could do instead."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


class RunsACommand(OpensAFile):
    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def crafted_checkpoint(tmp_path: Path, payload: type[OpensAFile] = OpensAFile) -> tuple[Path, Path]:
    """A .ckpt shaped like mckd's whose pickle would create a marker file; returns (checkpoint, marker)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": payload(marker)}, path)
    return path, marker


def module_checkpoint(path: Path, num_classes: int) -> Path:
    """A loadable checkpoint of the smoke teacher's model with `num_classes` classes, written without training."""
    cfg = compose_train("debug=smoke")
    module = SegmentationModule(model={**model_config(cfg.teacher, cfg.dataset.crop_size), "encoder_weights": None}, num_classes=num_classes,
                                class_names=[f"class{i}" for i in range(num_classes)], optim={"name": "adamw", "lr": 1e-3})
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return path


def only_error_line(proc) -> str:
    """The one line a refused command prints: exit code 2, no traceback."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output[-4000:]
    errors = [line for line in output.splitlines() if "[ERROR]" in line or line.startswith("error:")]
    assert len(errors) == 1, output[-4000:]
    return errors[0]


# -- weights-only loading --------------------------------------------------------------------------
@pytest.mark.parametrize("payload, call", [(OpensAFile, "io.open"), (RunsACommand, "posix.system")])
def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path, payload, call):
    path, marker = crafted_checkpoint(tmp_path, payload)
    with pytest.raises(NotACheckpointError, match=rf"{path} is not an mckd checkpoint: loading it would call {call}"):
        SegmentationModule.from_checkpoint(str(path))
    assert not marker.exists()


def test_the_commands_refuse_a_crafted_checkpoint(tmp_path, mckd_cli):
    path, marker = crafted_checkpoint(tmp_path)
    line = only_error_line(mckd_cli("mckd-eval", f"checkpoint={path}", check=False))
    assert str(path) in line and "expected a .ckpt written by mckd-train" in line
    train = mckd_cli("mckd-train", "debug=smoke", f"teacher_checkpoint={path}", f"hydra.run.dir={tmp_path / 'exp'}",
                     check=False)
    assert str(path) in only_error_line(train)
    assert not marker.exists() and not (tmp_path / "exp" / "steps" / "teacher.json").exists()


def truncated(path: Path) -> None:
    module_checkpoint(path, 6)
    path.write_bytes(path.read_bytes()[:100_000])


@pytest.mark.parametrize("write, reason", [
    (lambda p: p.write_text("not a checkpoint\n"), "not a PyTorch file"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not a PyTorch file"),
    (lambda p: p.write_bytes(b""), "empty or cut short"),
    (truncated, "failed reading zip archive"),
    (lambda p: torch.save({"weight": torch.zeros(3)}, p), "holds no mckd model"),
])
def test_a_file_that_is_not_a_checkpoint_gets_one_line(tmp_path, write, reason):
    path = tmp_path / "model.ckpt"
    write(path)
    with pytest.raises(NotACheckpointError, match=reason) as err:
        SegmentationModule.from_checkpoint(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_mckd_checkpoints_load_as_weights_only(tmp_path):
    module = SegmentationModule.from_checkpoint(str(module_checkpoint(tmp_path / "m.ckpt", 4)))
    assert module.hparams.num_classes == 4 and module.class_names == ["class0", "class1", "class2", "class3"]


def test_another_class_count_is_refused_before_anything_runs(tmp_path):
    path = module_checkpoint(tmp_path / "three.ckpt", 3)
    expected = rf"checkpoint {path} predicts 3 classes, but dataset synthetic has 6"
    exp = tmp_path / "exp"
    with pytest.raises(ClassCountError, match=expected):
        run_pipeline(compose_train("debug=smoke", f"experiment_dir={exp}", f"teacher_checkpoint={path}"))
    assert not (exp / "steps" / "teacher.json").exists() and not (exp / "logs").exists()

    overrides = [f"checkpoint={path}", "dataset=synthetic", "seed=0", f"output={tmp_path / 'eval.json'}"]
    with initialize_config_module("mckd.conf", version_base="1.3"):
        eval_cfg = compose("eval", overrides=overrides)
    with pytest.raises(ClassCountError, match=expected):
        evaluate(eval_cfg, overrides)

    (tmp_path / "images").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "images" / "a.png")
    overrides = [f"checkpoint={path}", "dataset=synthetic", "seed=0", f"input={tmp_path / 'images'}",
                 f"output={tmp_path / 'out'}"]
    with initialize_config_module("mckd.conf", version_base="1.3"):
        predict_cfg = compose("predict", overrides=overrides)
    with pytest.raises(ClassCountError, match=expected):
        predict(predict_cfg, overrides)


# -- torn files ------------------------------------------------------------------------------------
def test_checkpoints_are_written_by_rename(tmp_path, monkeypatch):
    assert isinstance(Pipeline(compose_train("debug=smoke", f"experiment_dir={tmp_path}")).trainer("teacher")
                      .strategy.checkpoint_io, AtomicCheckpointIO)
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)

    def killed(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1} and os.listdir(path.parent) == ["last.ckpt"]


def forget_teacher(exp: Path) -> None:
    """As if the run had stopped after the teacher's last.ckpt: its record and everything after it are gone."""
    for record in ("teacher", "label-stage0"):
        (exp / "steps" / f"{record}.json").unlink()
    shutil.rmtree(exp / "pseudo_labels")


def test_a_torn_last_checkpoint_is_set_aside_and_the_step_restarts(tmp_path, caplog):
    exp = tmp_path / "exp"
    smoke(exp, "stage=teacher")
    last = exp / "checkpoints" / "teacher" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    forget_teacher(exp)
    with caplog.at_level(logging.INFO, logger="mckd"):
        results = smoke(exp, "stage=teacher")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "teacher: cannot resume" in warnings[0] and str(last) in warnings[0]
    assert "teacher: training for 1 epochs" in [r.getMessage() for r in caplog.records]  # from its start
    [aside] = (exp / "checkpoints" / "teacher").glob("last.ckpt.corrupt-*")
    assert aside.name in warnings[0] and aside.stat().st_size < last.stat().st_size
    read_checkpoint(last)
    assert results["teacher"]["val_miou"] is not None
    for path in [*exp.glob("steps/*.json"), exp / "results.json"]:  # strict JSON: an absent class is null
        assert "NaN" not in path.read_text() and "Infinity" not in path.read_text(), path


# -- strict JSON, file modes -----------------------------------------------------------------------
def test_json_has_null_for_non_finite_numbers(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"a": math.nan, "b": [math.inf, np.float32("nan"), 1.5, (np.float64(-np.inf),)],
                      "c": {"d": {"e": -math.inf}, "f": np.float32(0.25), "g": np.int64(3)}, "h": None})
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {
        "a": None, "b": [None, None, 1.5, [None]], "c": {"d": {"e": None}, "f": 0.25, "g": 3}, "h": None}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_of_the_users_umask(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write(tmp_path / "f.json", lambda f: f.write(b"{}"))
        assert current_umask() == umask  # reading it did not change it
    finally:
        os.umask(before)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == mode


# -- CSV logs of a resumed training ----------------------------------------------------------------
def csv_rows(exp: Path) -> list[dict]:
    with open(exp / "logs" / "teacher" / "version_0" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_resumed_training_keeps_the_earlier_rows(tmp_path, caplog):
    exp = tmp_path / "exp"
    smoke(exp, "stage=teacher", "train.teacher_epochs=2", "trainer.log_every_n_steps=1")
    resumed_at = read_checkpoint(exp / "checkpoints" / "teacher" / "last.ckpt")["global_step"]
    earlier = [row for row in csv_rows(exp) if int(row["step"]) < resumed_at]
    forget_teacher(exp)
    with caplog.at_level(logging.INFO, logger="mckd"):
        # more epochs than the experiment was started with: an identity change, allowed explicitly
        smoke(exp, "stage=teacher", "train.teacher_epochs=3", "trainer.log_every_n_steps=1", "resume_mismatch=allow")
    assert "teacher: training for 3 epochs, resuming from" in caplog.text
    rows = csv_rows(exp)
    train = [row for row in rows if row["train/loss"]]
    assert resumed_at > 0 and earlier and rows[: len(earlier)] == earlier  # kept as they were
    assert {int(row["epoch"]) for row in train} == {0, 1, 2}
    assert sorted(int(row["step"]) for row in train) == list(range(len(train)))  # each step once


def test_last_ckpt_is_the_last_epoch_when_the_best_came_earlier(tmp_path, monkeypatch):
    """A step resumes from last.ckpt, and the record scores it as the last epoch: it must be the last epoch, also
    when validation peaked earlier (Lightning 2.6's save_last=True writes it only with a new best)."""
    original = SegmentationModule._log_iou

    def falling(self, prefix, metric):  # in training, the first epoch validates best
        if self.trainer.state.fn != "fit":
            return original(self, prefix, metric)
        metric.reset()
        self.log(f"{prefix}/miou", 1.0 / (1 + self.current_epoch))

    monkeypatch.setattr(SegmentationModule, "_log_iou", falling)
    exp = tmp_path / "exp"
    smoke(exp, "stage=teacher", "train.teacher_epochs=3")
    checkpoints = exp / "checkpoints" / "teacher"
    assert read_checkpoint(checkpoints / "best.ckpt")["epoch"] == 0
    assert read_checkpoint(checkpoints / "last.ckpt")["epoch"] == 2


def test_rows_from_the_resumed_step_on_and_rows_cut_short_are_dropped(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,loss\n0,0,1.0\n0,1,0.9\n1,2,0.8\n1,3,0.7\n1,4")
    keep_rows_before(str(path), ["epoch", "step", "loss"], 3)
    assert path.read_text().splitlines() == ["epoch,step,loss", "0,0,1.0", "0,1,0.9", "1,2,0.8"]
    path.write_text(path.read_text() + "1,3")  # a row cut short
    keep_rows_before(str(path), ["epoch", "step", "loss"], 5)
    assert path.read_text().splitlines() == ["epoch,step,loss", "0,0,1.0", "0,1,0.9", "1,2,0.8"]
