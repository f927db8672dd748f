"""W&B (offline) on a debug=smoke pipeline: one run per model and a pseudo-label run, one group, resumable ids."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import pytest
from wandb_offline import OfflineRun, offline_runs

from mckd.data.synthetic import CLASS_NAMES

MODEL_STEPS = ("teacher", "stage1-a", "stage1-b", "final")
MODEL_KEYS = {"train/loss", "train/lr", "val/miou", *(f"val/iou/{c}" for c in CLASS_NAMES)}


def merged(runs: list[OfflineRun]) -> OfflineRun:
    """The runs of one id (first made, then resumed) as the server shows them after `wandb sync`."""
    out = OfflineRun(runs[0].directory, runs[0].id, runs[0].group, runs[0].job_type, runs[0].name, runs[0].project)
    for run in runs:
        out.config.update(run.config)
        out.history += run.history
        out.summary.update(run.summary)
        out.exit_code = run.exit_code
    return out


@pytest.fixture(scope="module")
def runs(smoke_experiment: Path) -> dict[str, list[OfflineRun]]:
    by_job = defaultdict(list)
    for run in offline_runs(smoke_experiment):
        by_job[run.job_type].append(run)
    return dict(by_job)


def test_one_run_per_model_in_the_experiments_group(smoke_experiment: Path, runs) -> None:
    ids = json.loads((smoke_experiment / "wandb.json").read_text())
    assert set(runs) == {*MODEL_STEPS, "pseudo-label"}
    for job, job_runs in runs.items():
        for run in job_runs:
            assert run.group == smoke_experiment.name == ids["group"]
            assert run.id == f"{ids['prefix']}-{job}", "run ids are deterministic per experiment and step"
            assert run.project == "mckd"
            assert run.exit_code == 0


def test_resuming_reuses_the_same_runs(runs) -> None:
    # teacher was interrupted (record removed) and resumed; the pseudo-label run is written at the end of both
    # invocations: each has two offline segments with the same id, and no other run was made twice
    counts = {job: len(r) for job, r in runs.items()}
    assert counts == {"teacher": 2, "stage1-a": 1, "stage1-b": 1, "final": 1, "pseudo-label": 2}
    assert len({r.id for rs in runs.values() for r in rs}) == 5


def test_model_runs_log_config_metrics_and_masks(smoke_experiment: Path, runs) -> None:
    for step in MODEL_STEPS:
        run = merged(runs[step])
        assert set(run.summary) >= MODEL_KEYS, f"{step}: {sorted(MODEL_KEYS - set(run.summary))} not logged"
        record = json.loads((smoke_experiment / "steps" / f"{step}.json").read_text())
        assert run.summary["val/miou"] == pytest.approx(record["val_miou"], abs=1e-6), "last val = best checkpoint"
        # the composed config, and the module's own hyperparameters beside it
        assert run.config["num_stages"] == 2 and run.config["dataset"]["name"] == "synthetic"
        assert run.config["logger"]["wandb"]["project"] == "mckd"
        assert run.config["module"]["name"] == step
        # validation images with ground-truth and predicted masks, and the class labels of the masks
        images = [h for h in run.history if "val/examples/all_masks" in h]
        assert images, f"{step}: no validation images"
        masks = images[-1]["val/examples/all_masks"]
        assert len(masks) == 4 and all(set(m) == {"prediction", "ground_truth"} for m in masks)
        labels = run.config["_wandb"]["mask/class_labels"]["val/examples_wandb_delimeter_prediction"]["value"]
        assert [labels[str(i)] for i in range(len(CLASS_NAMES))] == list(CLASS_NAMES)


def test_pseudo_label_run_has_stage_mious_and_the_summary_table(smoke_experiment: Path, runs) -> None:
    run = merged(runs["pseudo-label"])
    for stage in (0, 1):
        record = json.loads((smoke_experiment / "steps" / f"label-stage{stage}.json").read_text())
        assert run.summary[f"pseudo_label/stage{stage}_miou"] == pytest.approx(record["pseudo_label_miou"])
    assert [h["stage"] for h in runs["pseudo-label"][-1].history if "pseudo_label/miou" in h] == [0, 1]
    table_path = runs["pseudo-label"][-1].directory / "files" / run.summary["results/path"]
    table = json.loads(table_path.read_text())
    assert [row[0] for row in table["data"]] == list(MODEL_STEPS)
    assert {"step", "val_miou", "pseudo_label_miou", "iou/disc"} <= set(table["columns"])
    for name in ("stages", "qualitative", "class_distribution"):
        assert run.summary[f"pictures/{name}/_type"] == "image-file"


def test_settings_follow_the_environment(monkeypatch, caplog, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module

    from mckd.pipeline.wandb_logging import resolve_mode

    monkeypatch.setenv("WANDB_PROJECT", "my-project")
    monkeypatch.setenv("WANDB_ENTITY", "my-team")
    with initialize_config_module("mckd.conf", version_base="1.3"):
        cfg = compose("train", overrides=["logger=wandb"])
    assert (cfg.logger.wandb.project, cfg.logger.wandb.entity) == ("my-project", "my-team")
    with initialize_config_module("mckd.conf", version_base="1.3"):
        assert compose("train").logger.wandb is None, "logger=csv (the default) logs nothing to W&B"
    # no credentials: offline by itself; WANDB_MODE and logger.wandb.mode are obeyed
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with caplog.at_level(logging.INFO, logger="mckd"):
        assert resolve_mode(None, tmp_path) == "offline"
        assert resolve_mode(None, tmp_path) == "offline"
    said = [r.getMessage() for r in caplog.records if "wandb sync" in r.getMessage()]
    assert len(said) == 1 and "no credentials" in said[0], "said once, with how to upload"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(None, tmp_path) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(None, tmp_path) == "disabled"
    assert resolve_mode("offline", tmp_path) == "offline"
