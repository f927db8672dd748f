"""Per-step seeding: a killed and resumed run, a run split into `stage=` commands, and separate pair members give
the figures and the pseudo-labels of one uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import cli_env

from mckd.data.sampling import EpochSampler, batch_shares

DRIVER = Path(__file__).with_name("kill_driver.py")
BIN = Path(sys.executable).parent
# three stages, and several epochs per model so that a kill can fall between epochs of one training
ARGS = ("debug=smoke", "num_stages=3", "train.teacher_epochs=3", "train.student_epochs=2", "train.final_epochs=2")
KILL_POINTS = ("train:teacher:4", "label:0:5", "train:stage1-b:3", "label:1:3", "train:final:3", "results")
MORE_KILL_POINTS = ("train:teacher:1", "train:stage1-a:2", "train:stage2-a:1", "label:2:7")


def run(exp: Path, *args: str, kill: str | None = None) -> int:
    """mckd-train (through the kill driver when `kill` is set) in its own process group."""
    command = [sys.executable, str(DRIVER), kill] if kill else [str(BIN / "mckd-train")]
    proc = subprocess.run([*command, *ARGS, f"hydra.run.dir={exp}", *args], capture_output=True, text=True,
                          timeout=600, env=cli_env(exp.parent), start_new_session=True)
    if kill is None and proc.returncode != 0:
        raise AssertionError(f"mckd-train exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc.returncode


def figures(value):
    """results.json without wall times, NaN as None (NaN != NaN)."""
    if isinstance(value, dict):
        return {k: figures(v) for k, v in value.items() if not k.endswith("wall_time_s")}
    if isinstance(value, list):
        return [figures(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def fingerprint(exp: Path) -> tuple[dict, dict[str, str]]:
    """The experiment's figures, and a digest of every pseudo-label and confidence file."""
    results = figures(json.loads((exp / "results.json").read_text()))
    files = {str(p.relative_to(exp)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((exp / "pseudo_labels").rglob("*.png"))}
    return results, files


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, dict[str, str]]:
    exp = tmp_path_factory.mktemp("reference") / "exp"
    run(exp)
    return fingerprint(exp)


def test_killed_runs_resume_to_the_same_figures_and_labels(tmp_path, reference):
    """One experiment killed (SIGKILL of the process group) at each point in turn, re-run after every kill."""
    exp = tmp_path / "exp"
    for point in KILL_POINTS:
        assert run(exp, kill=point) != 0, f"the run was not killed at {point}"
    run(exp)
    assert fingerprint(exp) == reference


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS + MORE_KILL_POINTS)
def test_each_kill_point_alone_resumes_to_the_same_result(tmp_path, reference, point):
    exp = tmp_path / "exp"
    assert run(exp, kill=point) != 0
    run(exp)
    assert fingerprint(exp) == reference


@pytest.mark.slow  # the default suite checks split commands with parallel members through SLURM (test_slurm.py)
def test_split_stage_commands_and_parallel_members_equal_one_run(tmp_path, reference):
    """stage=teacher, then the pair members of stage 1 as two processes at once (one with loader workers), then
    the rest."""
    exp = tmp_path / "exp"
    run(exp, "stage=teacher")
    with ThreadPoolExecutor(2) as pool:
        members = [pool.submit(run, exp, "stage=pairs", "pair_stage=1", "member=b", "dataset.num_workers=2"),
                   pool.submit(run, exp, "stage=pairs", "pair_stage=1", "member=a")]
        for member in members:
            member.result()
    run(exp, "stage=pairs")
    run(exp, "stage=final")
    assert fingerprint(exp) == reference


# -- the sampler -------------------------------------------------------------------------------------
def test_every_item_equally_often_per_epoch():
    sampler = EpochSampler([7], num_batches=10, batch_size=4, seed=1)
    counts = torch.bincount(torch.tensor([i for i, _ in sampler]), minlength=7)
    assert counts.sum() == 40 and counts.max() - counts.min() <= 1


def test_batch_ratio_holds_in_every_batch_and_groups_are_covered_evenly():
    sizes, batch = [30, 5], 8
    sampler = EpochSampler(sizes, num_batches=12, batch_size=batch, seed=0, fractions=[0.5, 0.5])
    items = [i for i, _ in sampler]
    batches = [items[b * batch:(b + 1) * batch] for b in range(12)]
    assert all(sum(i >= 30 for i in b) == 4 for b in batches)  # 1:1 although the labeled group is 6x smaller
    pseudo = torch.bincount(torch.tensor([i for i in items if i < 30]), minlength=30)
    labeled = torch.bincount(torch.tensor([i - 30 for i in items if i >= 30]), minlength=5)
    assert pseudo.max() - pseudo.min() <= 1 and labeled.max() - labeled.min() <= 1
    assert batch_shares(8, [0.75, 0.25]) == [6, 2] and batch_shares(5, [0.5, 0.5]) == [3, 2]


def test_epochs_differ_but_each_is_a_function_of_seed_and_epoch():
    epoch = {"e": 0}
    sampler = EpochSampler([20], num_batches=5, batch_size=4, seed=3, epoch=lambda: epoch["e"])
    first = list(sampler)
    epoch["e"] = 1
    second = list(sampler)
    assert first != second
    epoch["e"] = 0
    assert list(sampler) == first
    assert list(EpochSampler([20], 5, 4, seed=4)) != first


def test_a_resumed_labeling_predicts_whole_batches():
    """Labels written before a kill are predicted again with their batch-mates, never in a smaller batch."""
    from mckd.data.source import Sample
    from mckd.pipeline.orchestrator import unfinished_batches

    samples = [Sample(f"s{i}", f"s{i}.png") for i in range(10)]
    assert [s.id for s in unfinished_batches(samples, {"s4", "s9"}, 4)] == ["s4", "s5", "s6", "s7", "s8", "s9"]
    assert unfinished_batches(samples, set(), 4) == []
    assert unfinished_batches(samples, {s.id for s in samples}, 4) == samples
