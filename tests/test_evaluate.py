"""mckd-eval reproduces the val mIoU that training recorded, from a checkpoint or an experiment directory; a checkpoint
carries its dataset config, so a .ckpt copied anywhere evaluates and predicts alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import experiment_dataset
from hydra import compose, initialize_config_module
from lightning import LightningDataModule
from omegaconf import OmegaConf
from PIL import Image

from mckd import layout
from mckd.checkpoints import (
    DATAMODULE_HPARAMS,
    CheckpointError,
    dataset_config,
    read_checkpoint,
    resolve_model,
)
from mckd.data import SegmentationData
from mckd.data.synthetic import CLASS_NAMES, render_scene
from mckd.evaluate import evaluate
from mckd.seeding import step_seed


def eval_config(*overrides: str):
    with initialize_config_module("mckd.conf", version_base="1.3"):
        return compose("eval", overrides=list(overrides))


def test_cli_on_a_checkpoint_reproduces_its_val_miou(smoke_experiment: Path, mckd_cli, tmp_path: Path) -> None:
    out = tmp_path / "teacher.json"
    proc = mckd_cli("mckd-eval", f"checkpoint={smoke_experiment / 'checkpoints' / 'teacher' / 'best.ckpt'}",
                    f"output={out}")
    result = json.loads(out.read_text())
    record = json.loads((smoke_experiment / "steps" / "teacher.json").read_text())
    assert result["miou"] == pytest.approx(record["val_miou"], abs=1e-4)
    for name, iou in record["per_class_iou"].items():  # a class absent from truth and prediction: null in both
        got = result["per_class_iou"][name]
        assert got is None if iou is None else got == pytest.approx(iou, abs=1e-4)
    dataset = experiment_dataset(smoke_experiment)  # debug=smoke: max_val images
    assert result["step"] == "teacher" and result["split"] == "val" and result["num_images"] == dataset.split.max_val
    assert 0 <= result["pixel_accuracy"] <= 1
    assert sum(result["class_pixels"].values()) == dataset.split.max_val * dataset.params.height * dataset.params.width
    assert "| class | IoU | accuracy | pixels |" in proc.stdout
    assert all(f"| {name} |" in proc.stdout for name in CLASS_NAMES)
    assert "pixel accuracy" in proc.stdout


def test_experiment_directory_means_its_final_student(smoke_experiment: Path, tmp_path: Path) -> None:
    overrides = [f"checkpoint={smoke_experiment}", f"output={tmp_path / 'final.json'}"]
    result = evaluate(eval_config(*overrides), overrides)
    record = json.loads((smoke_experiment / "steps" / "final.json").read_text())
    assert result["step"] == "final" and result["checkpoint"].endswith("checkpoints/final/best.ckpt")
    assert result["miou"] == pytest.approx(record["val_miou"], abs=1e-4)
    assert json.loads((tmp_path / "final.json").read_text())["miou"] == result["miou"]
    # flip TTA evaluates something else, and says so in its output
    overrides = [f"checkpoint={smoke_experiment}", "step=stage1-a", "flip=true", f"output={tmp_path / 'a.json'}"]
    flipped = evaluate(eval_config(*overrides), overrides)
    assert flipped["step"] == "stage1-a" and flipped["inference"]["flip"] is True


def test_unknown_dataset_and_missing_steps_are_clear_errors(smoke_experiment: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="pass dataset=NAME"):
        dataset_config(eval_config("checkpoint=x.ckpt"), ["checkpoint=x.ckpt"], None)
    with pytest.raises(CheckpointError, match="step 'stage9-a' has not finished.*finished models: final"):
        resolve_model(str(smoke_experiment), "stage9-a")
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_model(str(tmp_path / "missing.ckpt"))


def test_a_checkpoint_alone_carries_its_dataset(smoke_experiment: Path, tmp_path: Path) -> None:
    """A checkpoint copied out of its experiment still knows its dataset: no dataset=NAME needed."""
    alone = tmp_path / "final.ckpt"
    alone.write_bytes((smoke_experiment / "checkpoints" / "final" / "best.ckpt").read_bytes())
    overrides = [f"checkpoint={alone}", f"output={tmp_path / 'alone.json'}"]
    result = evaluate(eval_config(*overrides), overrides)
    record = json.loads((smoke_experiment / "steps" / "final.json").read_text())
    assert result["miou"] == pytest.approx(record["val_miou"], abs=1e-4)
    assert result["dataset"] == experiment_dataset(smoke_experiment).name


def copied_alone(smoke_experiment: Path, folder: Path, step: str = layout.FINAL) -> Path:
    """`step`'s best checkpoint, copied into the empty `folder` under another name."""
    folder.mkdir()
    alone = folder / "model.ckpt"
    alone.write_bytes(layout.best_checkpoint(smoke_experiment, step).read_bytes())
    return alone


def test_a_checkpoint_copied_alone_evaluates_and_predicts_from_the_command_line(smoke_experiment: Path, mckd_cli,
                                                                               tmp_path: Path) -> None:
    """`mckd-eval checkpoint=THAT.ckpt` in an empty folder, nothing else given: the recorded val mIoU, its JSON beside
    the checkpoint; `mckd-predict` on it writes masks in the dataset's palette."""
    alone = copied_alone(smoke_experiment, tmp_path / "alone")
    mckd_cli("mckd-eval", f"checkpoint={alone}", cwd=alone.parent)
    result = json.loads((alone.parent / "model-val-eval.json").read_text())
    record = json.loads(layout.record_path(smoke_experiment, layout.FINAL).read_text())
    assert result["miou"] == pytest.approx(record["val_miou"], abs=1e-4)
    for name, iou in record["per_class_iou"].items():
        got = result["per_class_iou"][name]
        assert got is None if iou is None else got == pytest.approx(iou, abs=1e-4)
    assert result["experiment"] is None and result["step"] == layout.FINAL
    assert result["num_images"] == experiment_dataset(smoke_experiment).split.max_val

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(render_scene(0, 48, 80)[0]).save(images / "scene.png")
    out = tmp_path / "predicted"
    mckd_cli("mckd-predict", f"checkpoint={alone}", f"input={images}", f"output={out}", cwd=alone.parent)
    summary = json.loads((out / "predictions.json").read_text())
    palette = read_checkpoint(alone)[DATAMODULE_HPARAMS]["palette"]
    assert summary["classes"] == list(CLASS_NAMES) and summary["palette"] == palette
    labels = np.asarray(Image.open(out / "labels" / "scene.png"))
    colours = np.asarray(Image.open(out / "color" / "scene.png"))
    assert labels.shape == (48, 80) and np.array_equal(colours, np.asarray(palette, dtype=np.uint8)[labels])
    assert sorted(p.name for p in alone.parent.iterdir()) == ["model-val-eval.json", "model.ckpt"]


def test_every_checkpoint_carries_its_dataset_config_and_data_settings(smoke_experiment: Path) -> None:
    """Lightning's datamodule_hyper_parameters: the dataset config as the experiment composed it, the palette, and
    what the step trained on with which sampler seed."""
    assert DATAMODULE_HPARAMS == LightningDataModule.CHECKPOINT_HYPER_PARAMS_KEY
    dataset = experiment_dataset(smoke_experiment)
    palette = SegmentationData.build(dataset).source.palette.tolist()
    for step in layout.model_steps(2, 2):
        for path in layout.checkpoint_dir(smoke_experiment, step).glob("*.ckpt"):
            data = read_checkpoint(path)[DATAMODULE_HPARAMS]
            assert data["dataset"] == OmegaConf.to_container(dataset), path
            assert data["palette"] == palette and data["seed"] == step_seed(0, step)
            assert data["train_set"] == ("labeled" if step == layout.TEACHER else "pseudo_labels")


def test_dataset_keys_on_the_command_line_edit_the_checkpoints_config(smoke_experiment: Path, tmp_path: Path) -> None:
    """Declared keys are typed by the schema (dataset.split.max_val=null); the reader's open params take a +."""
    alone = copied_alone(smoke_experiment, tmp_path / "alone")
    overrides = [f"checkpoint={alone}", "dataset.split.max_val=null", "+dataset.params.num_val=10",
                 "dataset.eval_batch_size=3", f"output={tmp_path / 'ten.json'}"]
    assert evaluate(eval_config(*overrides), overrides)["num_images"] == 10


def test_old_checkpoints_use_the_modules_copy_or_say_what_is_missing(smoke_experiment: Path, tmp_path: Path) -> None:
    """A checkpoint written before the DataModule kept the dataset config still evaluates from its module's copy; one
    with neither stops with one line naming the file and the way out."""
    contents = torch.load(layout.best_checkpoint(smoke_experiment, layout.TEACHER), weights_only=True)
    dataset = contents.pop(DATAMODULE_HPARAMS)["dataset"]
    contents.pop("datamodule_hparams_name")
    older = tmp_path / "older.ckpt"
    torch.save({**contents, "hyper_parameters": {**contents["hyper_parameters"], "dataset": dataset}}, older)
    overrides = [f"checkpoint={older}", f"output={tmp_path / 'older.json'}"]
    record = json.loads(layout.record_path(smoke_experiment, layout.TEACHER).read_text())
    assert evaluate(eval_config(*overrides), overrides)["miou"] == pytest.approx(record["val_miou"], abs=1e-4)

    oldest = tmp_path / "oldest.ckpt"
    torch.save(contents, oldest)
    overrides = [f"checkpoint={oldest}"]
    with pytest.raises(CheckpointError, match=rf"checkpoint {oldest} does not carry the dataset config .*dataset=NAME"):
        evaluate(eval_config(*overrides), overrides)
