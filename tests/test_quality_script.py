"""scripts/camvid_quality.py: its job graph, and the whole table end to end on generated CamVid-layout data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
from conftest import cli_env
from fixtures import dataset_config, make_camvid
from omegaconf import OmegaConf

from mckd import layout
from mckd.atomic import read_json, write_json
from mckd.data.datamodule import SegmentationData
from mckd.pipeline.store import PseudoLabelStore
from mckd.records import LabelRecord

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import camvid_quality  # noqa: E402

ROW_DIRS = ("camvid_supervised", "camvid_teacher", "camvid_vanilla_kd", "camvid_mckd", "camvid_mckd_k3",
            camvid_quality.CEILING)


def test_jobs_start_only_after_what_they_need() -> None:
    finished: dict[str, float] = {}
    started: dict[str, float] = {}

    def job(name: str):
        def run() -> None:
            started[name] = time.monotonic()
            time.sleep(0.02)
            finished[name] = time.monotonic()
        return run

    graph = {"t": ([], job("t")), "a": (["t"], job("a")), "b": (["t"], job("b")), "c": (["a", "b"], job("c"))}
    camvid_quality.run_graph(graph, parallel=2)
    assert set(finished) == set(graph)
    for name, (deps, _) in graph.items():
        assert all(finished[d] <= started[name] for d in deps), name


def test_a_row_runs_only_what_it_needs(tmp_path: Path) -> None:
    jobs = camvid_quality.seed_jobs(tmp_path, 1, [])
    assert list(camvid_quality.needed_by(jobs, ["seed1/teacher", "seed1/supervised"])) == ["seed1/teacher",
                                                                                          "seed1/supervised"]
    k3 = camvid_quality.needed_by(jobs, ["seed1/k3-final"])
    assert "seed1/k2-a" in k3 and "seed1/k2-final" not in k3 and "seed1/supervised" not in k3


def test_k3_members_start_before_k2_final(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The longest chain goes first: when K=2's labels are done, K=3's members take the free slots."""
    started: list[str] = []

    def fake_run(out: Path, preset: str, seed: int, extra: list[str], tag: str = "", exp: Path | None = None) -> Path:
        started.append(preset + tag)
        time.sleep(0.02)
        return out

    monkeypatch.setattr(camvid_quality, "run_job", fake_run)
    monkeypatch.setattr(camvid_quality, "copy_first_stage", lambda src, dst: None)
    monkeypatch.setattr(camvid_quality, "label_with_ground_truth", lambda k2, dst: None)
    camvid_quality.run_graph(camvid_quality.seed_jobs(tmp_path, 0, []), parallel=2)
    assert started.index("camvid_mckd_k3-b") < started.index("camvid_mckd")  # camvid_mckd: K=2's final student


def test_kd_runs_take_the_teacher_rows_stage0_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The teacher row labels the unlabeled split with the checkpoint the KD rows load: they copy its labels."""
    row = tmp_path / "seed0" / "camvid_teacher"
    record = layout.record_path(row, layout.label_step(0))
    record.parent.mkdir(parents=True)
    record.write_text('{"name": "label-stage0"}')
    labels = layout.label_stage_dir(layout.pseudo_label_dir(row), 0)
    labels.mkdir(parents=True)
    (labels / "manifest.json").write_text("{}")
    seen: dict[str, bool] = {}

    def fake_run(out: Path, preset: str, seed: int, extra: list[str], tag: str = "", exp: Path | None = None) -> Path:
        exp = out / f"seed{seed}" / preset
        seen[preset] = (layout.record_path(exp, layout.label_step(0)).is_file()
                        and (layout.label_stage_dir(layout.pseudo_label_dir(exp), 0) / "manifest.json").is_file())
        return exp

    monkeypatch.setattr(camvid_quality, "run_job", fake_run)
    jobs = camvid_quality.seed_jobs(tmp_path, 0, [])
    for name in ("seed0/k2-labels0", "seed0/vanilla"):
        jobs[name][1]()
    assert seen == {"camvid_mckd": True, "camvid_vanilla_kd": True}


def test_the_ceiling_trains_k2s_final_on_ground_truth(tmp_path: Path) -> None:
    jobs = camvid_quality.seed_jobs(tmp_path, 0, [])
    ceiling = camvid_quality.needed_by(jobs, camvid_quality.wanted_jobs(0, [camvid_quality.CEILING], []))
    assert {"seed0/k2-labels1", "seed0/ceiling-labels", "seed0/ceiling"} <= set(ceiling)
    assert "seed0/k2-final" not in ceiling and "seed0/k3-a" not in ceiling


def saved_camvid_config(tmp_path: Path) -> Path:
    """A run's saved Hydra config with generated CamVid (8 train frames: 1 labeled, 7 unlabeled)."""
    config = tmp_path / "config.yaml"
    OmegaConf.save({"dataset": dataset_config("camvid", make_camvid(tmp_path / "camvid", n_train=8, n_val=1))}, config)
    return config


def test_ground_truth_replaces_a_label_stage_and_its_score(tmp_path: Path) -> None:
    """The ceiling's stage-1 labels are the unlabeled frames' own masks, confidence 1, and its record scores them."""
    config = saved_camvid_config(tmp_path)
    data = SegmentationData.build(OmegaConf.load(config).dataset)
    unlabeled, exp = data.splits.unlabeled, tmp_path / "exp"
    store = PseudoLabelStore(layout.pseudo_label_dir(exp), data.num_classes)
    for sample in unlabeled:  # a labeler that says "sky" everywhere, half sure
        shape = data.source.read_mask(sample).shape
        store.write_sample(1, sample.id, np.zeros(shape, np.uint8), np.full(shape, 0.5, np.float32))
    store.write_manifest(1, {"partitions": [{"index": 0, "ids": [s.id for s in unlabeled]}]})
    record = layout.record_path(exp, layout.label_step(1))
    write_json(record, LabelRecord(layout.label_step(1), 1, 0.1, None, 12.5).to_json())

    camvid_quality.write_ground_truth_labels(exp, config, 1)

    assert len(unlabeled) == 7
    for sample in unlabeled:
        stored = store.reader(1).read(sample.id)
        assert np.array_equal(stored["label"], data.source.read_mask(sample))
        assert (stored["confidence"] == 255).all()
    scored = read_json(record)
    assert scored["pseudo_label_miou"] == 1.0 and scored["wall_time_s"] == 12.5
    assert set(scored["pseudo_label_per_class_iou"]) == set(data.class_names)


def test_the_ceiling_stops_on_a_frame_without_ground_truth(tmp_path: Path) -> None:
    config = saved_camvid_config(tmp_path)
    store = PseudoLabelStore(layout.pseudo_label_dir(tmp_path / "exp"), 11)
    store.write_sample(1, "not_in_the_split", np.zeros((4, 4), np.uint8), np.ones((4, 4), np.float32))
    store.write_manifest(1, {"partitions": [{"index": 0, "ids": ["not_in_the_split"]}]})
    with pytest.raises(SystemExit, match="needs the ground truth of all 1 frames of stage 1"):
        camvid_quality.write_ground_truth_labels(tmp_path / "exp", config, 1)
    assert np.array_equal(store.reader(1).read("not_in_the_split")["label"], np.zeros((4, 4), np.uint8))


def test_a_failed_job_skips_its_dependents_and_the_rest_go_on() -> None:
    ran: list[str] = []

    def fail() -> None:
        raise SystemExit("broken: see its log")

    graph = {"bad": ([], fail), "after-bad": (["bad"], lambda: ran.append("after-bad")),
             "other": ([], lambda: ran.append("other")), "after-other": (["other"], lambda: ran.append("after-other"))}
    assert camvid_quality.run_graph(graph, parallel=2) == ["after-bad", "bad"]
    assert sorted(ran) == ["after-other", "other"]


def test_probes_reuse_the_recipe_teacher_and_students(tmp_path: Path) -> None:
    """Every ablation probe starts from the recipe's teacher; a relabel-only probe trains no student."""
    jobs = camvid_quality.seed_jobs(tmp_path, 0, [], probes=True)
    for name, (_, reuses) in camvid_quality.PROBES.items():
        probe = camvid_quality.needed_by(jobs, [f"seed0/{name}"])
        assert "seed0/k2-labels0" in probe and "seed0/k2-final" not in probe
        relabel_only = reuses == camvid_quality.REUSE_STUDENTS
        assert (f"seed0/{name}/a" in probe) != relabel_only
        assert ("seed0/k2-a" in probe) == relabel_only


def test_a_labeler_probe_labels_stage_0_anew(tmp_path: Path) -> None:
    """A probe of a labeling knob copies the recipe's teacher but not its stage-0 labels; the others copy both."""
    k2 = tmp_path / "seed0" / "camvid_mckd"
    stage0 = layout.label_stage_dir(layout.pseudo_label_dir(k2), 0)
    stage0.mkdir(parents=True)
    for step in (layout.TEACHER, layout.label_step(0)):
        write_json(layout.record_path(k2, step), {})
    jobs = camvid_quality.seed_jobs(tmp_path, 0, [], probes=True)
    for name, reuses in [("labels at one scale, no flip", camvid_quality.REUSE_TEACHER),
                         ("no CutMix", camvid_quality.REUSE_LABELS0)]:
        assert camvid_quality.PROBES[name][1] == reuses
        with patch.object(camvid_quality, "run_job") as run_job:
            jobs[f"seed0/{name}/labels0"][1]()
        d = camvid_quality.probe_dir(tmp_path, 0, name)
        assert layout.record_path(d, layout.TEACHER).is_file()
        copied = reuses == camvid_quality.REUSE_LABELS0
        assert layout.record_path(d, layout.label_step(0)).is_file() == copied
        assert layout.label_stage_dir(layout.pseudo_label_dir(d), 0).is_dir() == copied
        assert "stage=teacher" in run_job.call_args.args[3]


def test_one_probe_alone_needs_the_teacher_and_no_other_probe(tmp_path: Path) -> None:
    name = "partitions by video (partition_group)"
    jobs = camvid_quality.seed_jobs(tmp_path, 0, [], probes=True)
    needed = camvid_quality.needed_by(jobs, camvid_quality.wanted_jobs(0, ["camvid_teacher"], [name]))
    others = [probe for probe in camvid_quality.PROBES if probe != name]
    assert {"seed0/teacher", "seed0/k2-labels0", f"seed0/{name}/a", f"seed0/{name}"} <= set(needed)
    assert not any(job.startswith(f"seed0/{probe}") for job in needed for probe in others)
    assert "seed0/k2-a" not in needed and "seed0/supervised" not in needed


def test_a_finished_command_is_not_started_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_subprocess_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(camvid_quality.subprocess, "run", fake_subprocess_run)
    camvid_quality.run_job(tmp_path, "camvid_teacher", 0, ["trainer=cpu"])
    camvid_quality.run_job(tmp_path, "camvid_teacher", 0, ["trainer=cpu"])
    assert len(calls) == 1
    camvid_quality.run_job(tmp_path, "camvid_teacher", 0, ["trainer=gpu"])  # another command: it runs
    assert len(calls) == 2


def test_a_job_that_can_never_start_is_an_error() -> None:
    with pytest.raises(ValueError, match="never finish"):
        camvid_quality.run_graph({"a": (["missing"], lambda: None)}, parallel=1)


def test_docs_table_is_replaced_between_its_markers(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# B\n\nbefore\n{camvid_quality.BEGIN}\nold\n{camvid_quality.END}\nafter\n")
    camvid_quality.write_docs("new table", docs)
    assert docs.read_text() == f"# B\n\nbefore\n{camvid_quality.BEGIN}\nnew table\n{camvid_quality.END}\nafter\n"


@pytest.mark.slow
def test_whole_table_on_generated_camvid(tmp_path: Path) -> None:
    """Every row's runs (pair members as separate processes, K=3 from K=2's first stage) and the docs table."""
    make_camvid(tmp_path / "data" / "camvid", n_train=16, n_val=4, videos=("0001TP", "0006R0"))
    docs = tmp_path / "benchmarks.md"
    env = {**cli_env(tmp_path), "MCKD_DATA_ROOT": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "scripts" / "camvid_quality.py"), "--seeds", "0", "--parallel", "2",
           "--out", str(tmp_path / "out"), "--docs", str(docs), "debug=smoke", "dataset.num_workers=0",
           "teacher.encoder_weights=null", "student.encoder_weights=null"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seed = tmp_path / "out" / "seed0"
    for row in ROW_DIRS:
        assert (seed / row / "results.json").is_file(), row
    k3 = json.loads((seed / "camvid_mckd_k3" / "results.json").read_text())
    k2 = json.loads((seed / "camvid_mckd" / "results.json").read_text())
    assert [s["pseudo_label_miou"] for s in k3["stages"]][0] == k2["stages"][0]["pseudo_label_miou"]
    for kd_row in ("camvid_mckd-labels0", "camvid_vanilla_kd"):  # the teacher row's stage-0 labels, not new ones
        assert "label-stage0: done already" in (seed / f"{kd_row}.log").read_text(), kd_row
    assert len(k3["stages"]) == 2 and k3["final"]["val_miou"] is not None
    ceiling = json.loads((seed / camvid_quality.CEILING / "results.json").read_text())
    assert ceiling["stages"][0]["pseudo_label_miou"] == 1.0 and ceiling["final"]["val_miou"] is not None
    table = docs.read_text()
    assert camvid_quality.BEGIN in table and "| MCKD K=3 |" in table and "RESULT " in proc.stdout
    assert "| stage 2 |" in table  # per-class IoU of the K=3 labels, stage by stage
    errors = subprocess.run([sys.executable, str(ROOT / "scripts" / "label_errors.py"), str(seed / "camvid_mckd"),
                             "--frames", r"^(.+)_(\d+)$"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert errors.returncode == 0, errors.stderr[-3000:]
    figures = json.loads(errors.stdout.splitlines()[-1])
    assert figures["samples"] == 12 and 0 <= figures["repeated"] + figures["fixed"] <= 1  # debug=smoke: 12 unlabeled
    assert 0 <= figures["neighbour_within_1_step"] <= figures["neighbour_within_2_steps"] <= 1
    rebuilt = subprocess.run([*cmd, "--table-only"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert rebuilt.returncode == 0 and " seed 0: " not in rebuilt.stdout  # no job ran ("  <preset> seed 0: 12 s")
    assert rebuilt.stdout.split("RESULT ")[1] == proc.stdout.split("RESULT ")[1]


def test_ablation_table_shows_each_rows_own_stage_0_labels(tmp_path: Path) -> None:
    """A labeler probe labels stage 0 anew, so the table gives every row its own stage-0 labels."""
    def pair_stage(exp: Path, labels0: float, labels1: float) -> None:
        figures = {layout.label_step(0): {"pseudo_label_miou": labels0},
                   layout.label_step(1): {"pseudo_label_miou": labels1},
                   **{m: {"val_miou": 0.5} for m in layout.student_names(1, 2)}}
        for step, record in figures.items():
            write_json(layout.record_path(exp, step), record)

    pair_stage(tmp_path / "seed0" / "camvid_mckd", 0.50, 0.55)
    pair_stage(camvid_quality.probe_dir(tmp_path, 0, "labels at one scale, no flip"), 0.48, 0.52)
    recipe, probe = camvid_quality.ablation_table(tmp_path, [0]).splitlines()[2:]
    assert recipe.split(" | ")[2:5] == ["0.5000", "0.5000", "0.5500"]
    assert probe.split(" | ")[2:] == ["0.4800", "0.5000", "0.5200", "-0.0300 |"]
