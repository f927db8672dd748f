"""mckd-eval reproduces the val mIoU that training recorded, from a checkpoint or an experiment directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from mckd.checkpoints import CheckpointError, dataset_config, experiment_dataset, resolve_model
from mckd.data.synthetic import CLASS_NAMES
from mckd.evaluate import evaluate


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
