"""launcher=slurm and launcher=local: the experiment as dependent jobs. The job graph and the sbatch parameters
are checked without SLURM; the rest against a real single-node SLURM started here (tests/slurm_cluster.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_env
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from slurm_cluster import Cluster, install, timestamp
from test_reproducible import fingerprint

from mckd.pipeline.jobs import (
    StepCommand,
    base_overrides,
    command,
    device_overrides,
    job_graph,
    requeue_signal,
    run_local,
    sbatch_parameters,
    settings,
    share_cores,
    unfinished,
)

BIN = Path(sys.executable).parent
ARGS = ("debug=smoke", "num_stages=2")
# what a CPU-only test cluster can give each job
SLURM_ARGS = ("launcher=slurm", "launcher.gpus_per_node=0", "launcher.cpus_per_task=1", "launcher.mem_gb=null",
              "launcher.time_min=30")


# -- the job graph, without SLURM ----------------------------------------------------------------------------------
def test_graph_is_teacher_parallel_members_labeling_final():
    jobs = {job.name: job for job in job_graph(num_stages=3, num_partitions=2)}
    assert list(jobs) == ["teacher", "stage1-a", "stage1-b", "label-stage1", "stage2-a", "stage2-b", "label-stage2",
                          "final"]
    assert jobs["teacher"].after == () and jobs["teacher"].records == ("teacher", "label-stage0")
    assert jobs["stage1-a"].after == jobs["stage1-b"].after == ("teacher",)
    assert jobs["stage1-b"].overrides == ("stage=pairs", "pair_stage=1", "member=b")
    assert jobs["label-stage1"].after == ("stage1-a", "stage1-b") and jobs["label-stage1"].kind == "label"
    assert jobs["label-stage1"].overrides == ("stage=pairs", "pair_stage=1")
    assert jobs["stage2-a"].after == ("label-stage1",) and jobs["final"].after == ("label-stage2",)
    assert jobs["final"].overrides == ("stage=final",)
    assert len(job_graph(num_stages=2, num_partitions=3)) == 1 + 3 + 1 + 1


def test_finished_jobs_are_not_submitted_and_not_waited_for():
    done = {"teacher", "label-stage0", "stage1-a"}
    jobs = {job.name: job for job in unfinished(job_graph(3, 2), lambda step: step in done)}
    assert list(jobs) == ["stage1-b", "label-stage1", "stage2-a", "stage2-b", "label-stage2", "final"]
    assert jobs["stage1-b"].after == () and jobs["label-stage1"].after == ("stage1-b",)
    # the teacher's job also makes stage 0's labels: without their record it runs again
    assert [j.name for j in unfinished(job_graph(2, 2), lambda step: step == "teacher")][0] == "teacher"


def test_command_lines_keep_the_users_overrides_and_derive_devices_from_nodes_and_gpus():
    user = ["experiment=cityscapes_1_8", "trainer=ddp_4gpus", "launcher=slurm", "launcher.nodes=2", "stage=all",
            "trainer.devices=8", "seed=3", "+launcher.additional.exclude=n1"]
    base = base_overrides(user)
    assert base == ["experiment=cityscapes_1_8", "trainer=ddp_4gpus", "seed=3"]
    with initialize_config_module("mckd.conf", version_base="1.3"):
        cfg = compose("train", overrides=["launcher=slurm", "launcher.nodes=2", "launcher.gpus_per_node=4",
                                          "launcher.label.nodes=1", "launcher.partition=gpu", "launcher.account=lab"])
    graph = {job.name: job for job in job_graph(2, 2)}
    train, label = settings(cfg.launcher, "train"), settings(cfg.launcher, "label")
    argv = command(graph["stage1-b"], base, Path("/shared/exp"), train)
    assert argv[1:3] == ["-m", "mckd.cli"] and argv[3:6] == base
    assert argv[6:] == ["hydra.run.dir=/shared/exp", "stage=pairs", "pair_stage=1", "member=b", "trainer.devices=4",
                        "++trainer.num_nodes=2"]
    params = sbatch_parameters(graph["stage1-b"], train, after=["11"])
    assert (params["nodes"], params["ntasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    assert params["dependency"] == "afterok:11" and params["partition"] == "gpu" and params["account"] == "lab"
    assert params["additional_parameters"]["kill-on-invalid-dep"] == "yes" and params["mem"] == "64GB"
    # the labeling job's own node count reaches both sbatch and the trainer
    assert sbatch_parameters(graph["label-stage1"], label, after=[])["nodes"] == 1
    assert device_overrides(label) == ["trainer.devices=4", "++trainer.num_nodes=1"]
    assert "dependency" not in sbatch_parameters(graph["teacher"], train, after=[])


def test_a_sweep_composes_with_hydras_submitit_launcher():
    """`mckd-train -m seed=0,1 hydra/launcher=submitit_slurm`: each sweep job runs one whole experiment here."""
    with initialize_config_module("mckd.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                                          "experiment=cityscapes_1_8"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.partition == "gpu"
    assert cfg.launcher.name == "none" and cfg.hydra.callbacks.sweep_summary is not None


def test_the_step_command_outlives_submitits_requeue_signal():
    """SLURM sends submitit's signal (SIGUSR2) to every process of the job step: mckd-train ignores it, and ends when
    submitit's handler has requeued the job, not by the signal's default action."""
    argv = [sys.executable, "-c", f"import os; os.kill(os.getpid(), {int(requeue_signal())}); print('alive')"]
    if not os.environ.get("SUBMITIT_PREEMPT_SIGNAL"):
        assert requeue_signal() == signal.SIGUSR2  # submitit's sbatch scripts: --signal=USR2@<signal_delay_s>
    assert StepCommand("teacher", argv)() == 0


def test_cpu_jobs_side_by_side_share_the_threads_and_a_job_alone_keeps_the_default():
    assert share_cores(2, 4) == 2
    assert share_cores(3, 8) == 2       # rounded down
    assert share_cores(3, 2) == 1       # at least one
    assert share_cores(1, 8) is None    # alone: torch's default


def threads_seen_by_local_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **launcher) -> dict[str, str]:
    """Run the K=2 graph with launcher=local where torch would take 4 threads, each job only writing down its
    OMP_NUM_THREADS ('-': unset)."""
    def write_threads(job, base, experiment_dir, resources):
        return [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'w').write(os.environ.get('OMP_NUM_THREADS', '-'))",
                str(experiment_dir / job.name)]

    monkeypatch.setattr("mckd.pipeline.jobs.command", write_threads)
    monkeypatch.setattr("mckd.pipeline.jobs.default_threads", lambda: 4)
    run_local(OmegaConf.create({"gpus_per_job": 0, "gpus": None, "max_parallel": None, **launcher}),
              job_graph(num_stages=2, num_partitions=2), [], tmp_path)
    return {name: (tmp_path / name).read_text() for name in ("teacher", "stage1-a", "stage1-b", "label-stage1", "final")}


def test_local_cpu_pair_members_share_the_cores_instead_of_each_taking_all(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_seen_by_local_jobs(tmp_path / "both", monkeypatch) == {
        "teacher": "-", "stage1-a": "2", "stage1-b": "2", "label-stage1": "-", "final": "-"}
    one_at_a_time = threads_seen_by_local_jobs(tmp_path / "one", monkeypatch, max_parallel=1)
    assert set(one_at_a_time.values()) == {"-"}, one_at_a_time
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting wins
    assert set(threads_seen_by_local_jobs(tmp_path / "user", monkeypatch).values()) == {"3"}


def test_no_sbatch_is_one_clear_line(tmp_path):
    env = {**cli_env(tmp_path), "PATH": str(BIN)}  # this venv's scripts, and no sbatch
    proc = subprocess.run([sys.executable, "-m", "mckd.cli", *ARGS, *SLURM_ARGS, f"hydra.run.dir={tmp_path / 'exp'}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "no `sbatch` on PATH" in errors[0] and "launcher=local" in errors[0], errors
    assert "Traceback" not in proc.stderr


# -- a real SLURM --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    reason = install()
    if reason:
        pytest.skip(reason)
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


def mckd_train(exp: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # one thread in every run: launcher=local's pair members would otherwise get fewer threads than the reference
    # run's, and the float order, so the digits, would differ
    env = {**(env or cli_env(exp.parent)), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mckd.cli", *ARGS, f"hydra.run.dir={exp}", *args],
                          capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"mckd-train exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


REQUEUED = ("PENDING", "REQUEUED")  # a job's record when it was requeued: it runs again under its id


def wait_for_jobs(cluster: Cluster, ids: list[str], exp: Path, timeout: float = 480) -> dict[str, dict]:
    """The job-completion records of `ids` once every one has ended (a requeued job: its last run); fails with the
    logs of a job that failed."""
    end = time.time() + timeout
    while time.time() < end:
        latest = {r["JobId"]: r for r in cluster.jobs() if r.get("JobId") in ids}
        records = {i: r for i, r in latest.items() if r["JobState"] not in REQUEUED}
        bad = [r for r in records.values() if r["JobState"] != "COMPLETED"]
        if bad or len(records) == len(ids):
            break
        time.sleep(2)
    else:
        raise AssertionError(f"jobs {ids} did not all end within {timeout} s: {latest}")
    if bad:
        logs = "\n".join(p.read_text()[-3000:] for r in bad for p in sorted((exp / "slurm").glob(f"{r['JobId']}_0_log.*")))
        raise AssertionError(f"jobs ended {[(r['JobId'], r['Name'], r['JobState']) for r in bad]}:\n{logs}")
    return records


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, dict[str, str]]:
    """The same experiment as one local mckd-train run."""
    exp = tmp_path_factory.mktemp("reference") / "exp"
    mckd_train(exp)
    return fingerprint(exp)


@pytest.fixture(scope="module")
def slurm_experiment(slurm, tmp_path_factory) -> tuple[Path, dict[str, dict], subprocess.CompletedProcess]:
    """`mckd-train debug=smoke num_stages=2 launcher=slurm`, run to its end through sbatch: (exp, step -> record)."""
    exp = tmp_path_factory.mktemp("slurm-run") / "exp"
    submit = mckd_train(exp, *SLURM_ARGS, env={**cli_env(exp.parent), **{"SLURM_CONF": str(slurm.conf)}})
    table = [json.loads(line) for line in (exp / "slurm" / "jobs.jsonl").read_text().splitlines()]
    records = wait_for_jobs(slurm, [row["job_id"] for row in table], exp)
    by_step = {row["step"]: {**records[row["job_id"]], **row} for row in table}
    print_table(by_step)
    return exp, by_step, submit


def print_table(by_step: dict[str, dict]) -> None:
    print("\njob id  step          state      start                end")
    for step, r in by_step.items():
        print(f"{r['JobId']:<7} {step:<13} {r['JobState']:<10} {r['StartTime']:<20} {r['EndTime']}")


def test_slurm_experiment_equals_one_local_run(slurm_experiment, reference):
    exp, by_step, submit = slurm_experiment
    assert list(by_step) == ["teacher", "stage1-a", "stage1-b", "label-stage1", "final"]
    assert "watch: squeue --jobs=" in submit.stdout and "under /tmp" in submit.stdout + submit.stderr
    # each job started after the jobs it waits for had ended
    ids = {r["job_id"]: r for r in by_step.values()}
    for r in by_step.values():
        assert all(timestamp(r["StartTime"]) >= timestamp(ids[a]["EndTime"]) for a in r["after"]), r
    assert by_step["label-stage1"]["after"] == [by_step["stage1-a"]["job_id"], by_step["stage1-b"]["job_id"]]
    assert fingerprint(exp) == reference


def test_pair_members_ran_at_the_same_time(slurm_experiment):
    _, by_step, _ = slurm_experiment
    a, b = by_step["stage1-a"], by_step["stage1-b"]
    assert timestamp(a["StartTime"]) < timestamp(b["EndTime"]) and timestamp(b["StartTime"]) < timestamp(a["EndTime"])


def test_resubmitting_a_finished_experiment_submits_nothing(slurm, slurm_experiment):
    exp, _, _ = slurm_experiment
    proc = mckd_train(exp, *SLURM_ARGS, env={**cli_env(exp.parent), "SLURM_CONF": str(slurm.conf)})
    assert "nothing to run" in proc.stdout + proc.stderr
    assert len((exp / "slurm" / "jobs.jsonl").read_text().splitlines()) == 5


def test_a_rejected_submission_is_one_clear_line(slurm, tmp_path):
    exp = tmp_path / "exp"
    proc = subprocess.run([sys.executable, "-m", "mckd.cli", *ARGS, *SLURM_ARGS, "launcher.partition=nosuch",
                           f"hydra.run.dir={exp}"], capture_output=True, text=True, timeout=300,
                          env={**cli_env(tmp_path), "SLURM_CONF": str(slurm.conf)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "sbatch rejected job teacher" in errors[0] and "partition" in errors[0], errors


def test_resubmitting_while_its_jobs_are_queued_is_one_clear_line(slurm, tmp_path):
    exp = tmp_path / "exp"
    env = {**cli_env(tmp_path), "SLURM_CONF": str(slurm.conf)}
    mckd_train(exp, *SLURM_ARGS, env=env)
    ids = [json.loads(line)["job_id"] for line in (exp / "slurm" / "jobs.jsonl").read_text().splitlines()]
    try:
        proc = subprocess.run([sys.executable, "-m", "mckd.cli", *ARGS, *SLURM_ARGS, f"hydra.run.dir={exp}"],
                              capture_output=True, text=True, timeout=300, env=env)
    finally:
        subprocess.run(["scancel", *ids], capture_output=True, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "still queued or running" in errors[0] and "scancel" in errors[0], errors
    assert len((exp / "slurm" / "jobs.jsonl").read_text().splitlines()) == len(ids)  # nothing submitted twice


DDP_CHECK = """
import json, os, sys
import lightning as L
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, default_root_dir=sys.argv[1])
trainer.fit(BoringModel())
ranks = trainer.strategy.all_gather(torch.tensor([trainer.global_rank])).flatten().tolist()
env = type(trainer.strategy.cluster_environment).__name__
with open(os.path.join(sys.argv[1], f"rank{trainer.global_rank}.json"), "w") as f:
    json.dump({"world_size": trainer.world_size, "env": env, "ranks": ranks}, f)
"""


@pytest.mark.slow
def test_two_srun_tasks_are_one_ddp_job_through_lightnings_slurm_environment(slurm, tmp_path):
    (tmp_path / "ddp_check.py").write_text(DDP_CHECK)
    proc = subprocess.run(["sbatch", "--parsable", "--wait", "--ntasks-per-node=2", "--nodes=1", "-J", "ddp-check",
                           f"--output={tmp_path}/ddp.out", "--wrap",
                           f"srun {sys.executable} {tmp_path / 'ddp_check.py'} {tmp_path}"],
                          capture_output=True, text=True, timeout=300, env={**cli_env(tmp_path), "SLURM_CONF": str(slurm.conf)})
    output = (tmp_path / "ddp.out").read_text() if (tmp_path / "ddp.out").exists() else ""
    assert proc.returncode == 0, proc.stderr + output[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen == {"world_size": 2, "env": "SLURMEnvironment", "ranks": [0, 1]}, seen


@pytest.mark.slow
def test_local_launcher_runs_the_same_graph_with_parallel_members(tmp_path, reference):
    exp = tmp_path / "exp"
    mckd_train(exp, "launcher=local")
    assert fingerprint(exp) == reference
    logs = {p.stem: p.read_text() for p in (exp / "jobs").glob("*.log")}
    assert sorted(logs) == ["final", "label-stage1", "stage1-a", "stage1-b", "teacher"]
    cli = (exp / "cli.log").read_text().splitlines()
    order = [line.split(" - ")[-1] for line in cli if line.endswith((": finished",)) or ": started" in line]
    started_b = next(i for i, line in enumerate(order) if line.startswith("stage1-b: started"))
    finished_a = next(i for i, line in enumerate(order) if line.startswith("stage1-a: finished"))
    assert started_b < finished_a, order  # b started before a finished: at the same time
    assert os.path.getsize(exp / "results.json") > 0


def squeue_state(cluster: Cluster, job_id: str) -> str:
    """The job's state in the queue ('' once it has left it)."""
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                          env={**os.environ, "SLURM_CONF": str(cluster.conf)})
    return proc.stdout.strip()


def wait_until(ready, what: str, timeout: float = 120, every: float = 0.2) -> None:
    end = time.time() + timeout
    while not ready():
        if time.time() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def test_requeued_and_cancelled_jobs_resume_their_own_step(slurm, tmp_path):
    """The teacher's job is requeued mid-training (`scontrol requeue`), then cancelled (`scancel`): SLURM cancels
    the jobs that wait for it; re-running the command resubmits them, and the teacher resumes from its own step's
    last.ckpt each time and finishes. (That a resumed training ends as an uninterrupted one is test_reproducible's.)"""
    args = ("train.teacher_epochs=30",)
    exp = tmp_path / "exp"
    env = {**cli_env(tmp_path), "SLURM_CONF": str(slurm.conf)}
    mckd_train(exp, *SLURM_ARGS, *args, env=env)
    table = exp / "slurm" / "jobs.jsonl"
    first = {row["step"]: row["job_id"] for row in map(json.loads, table.read_text().splitlines())}
    teacher = first["teacher"]
    last = exp / "checkpoints" / "teacher" / "last.ckpt"
    cli_log = exp / "cli.log"

    def resumed() -> int:
        return cli_log.read_text().count("teacher: training for 30 epochs, resuming from") if cli_log.is_file() else 0

    wait_until(last.is_file, "the teacher's first last.ckpt")
    subprocess.run(["scontrol", "requeue", teacher], check=True, capture_output=True, env=env)
    # SLURM holds a requeued job back (cred_expire: 10 s here, two minutes by default); once pending, start it now
    wait_until(lambda: squeue_state(slurm, teacher) == "PENDING", "the requeued teacher to be pending", timeout=60)
    subprocess.run(["scontrol", "update", f"jobid={teacher}", "StartTime=now"], check=True, capture_output=True, env=env)
    wait_until(lambda: resumed() == 1, "the requeued teacher to resume")
    mtime = last.stat().st_mtime
    wait_until(lambda: last.stat().st_mtime > mtime, "the resumed teacher's next epoch")
    subprocess.run(["scancel", teacher], check=True, capture_output=True, env=env)
    wait_until(lambda: not any(squeue_state(slurm, i) for i in first.values()), "the queue to empty", timeout=60)
    assert not (exp / "steps" / "teacher.json").exists()  # cancelled before it finished

    mckd_train(exp, *SLURM_ARGS, *args, env=env)
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    second = {row["step"]: row["job_id"] for row in rows[len(first):]}
    assert list(second) == list(first)  # nothing had finished: the whole graph again, new ids
    wait_for_jobs(slurm, [second["teacher"]], exp)
    subprocess.run(["scancel", *second.values()], capture_output=True, env=env)  # the rest is not this test's
    assert resumed() == 2
    resumes = [line for line in cli_log.read_text().splitlines() if "resuming from" in line]
    assert all(line.endswith(f"resuming from {last}") for line in resumes), resumes  # its own step's checkpoint

    assert json.loads((exp / "steps" / "teacher.json").read_text())["val_miou"] is not None
    assert json.loads((exp / "steps" / "label-stage0.json").read_text())["pseudo_label_miou"] is not None


@pytest.mark.slow
def test_a_job_at_its_time_limit_is_requeued_and_resumes_its_own_step(slurm, tmp_path):
    """Training jobs with a one-minute time limit: the teacher's, which needs longer, gets submitit's signal
    (SIGUSR2, `launcher.signal_delay_s` and up to 30 s more before the limit: slurmctld looks every 30 s), is
    requeued under its id before SLURM would kill it, and resumes from its own step's last.ckpt, as often as it
    takes; the experiment ends with the records of the same experiment run uninterrupted."""
    # ~1 min of training on an idle machine: past the first run's signal, which comes 25 to 55 s into it; a
    # resumed run is signalled ~48 s in (tests/slurm_cluster.py), so a busy machine needs more requeues
    args = ("train.teacher_epochs=100",)
    limits = ("launcher.train.time_min=1", "launcher.signal_delay_s=5", "launcher.max_requeues=10")
    exp, reference = tmp_path / "exp", tmp_path / "reference" / "exp"
    mckd_train(reference, *args)
    reference_last = torch.load(reference / "checkpoints" / "teacher" / "last.ckpt", map_location="cpu",
                                weights_only=False)
    # what a requeued job resumes from must be its last epoch (Lightning >= 2.6's save_last follows the best only)
    assert reference_last["epoch"] == 99, f"the uninterrupted teacher's last.ckpt is epoch {reference_last['epoch']}"
    env = {**cli_env(tmp_path), "SLURM_CONF": str(slurm.conf)}
    mckd_train(exp, *SLURM_ARGS, *limits, *args, env=env)
    table = [json.loads(line) for line in (exp / "slurm" / "jobs.jsonl").read_text().splitlines()]
    teacher = table[0]["job_id"]
    last = exp / "checkpoints" / "teacher" / "last.ckpt"

    def requeues() -> list[dict]:
        return [r for r in slurm.jobs() if r.get("JobId") == teacher and r["JobState"] in REQUEUED]

    # what the requeued job resumes from: read while it waits out SLURM's hold (10 s), before it trains again
    wait_until(lambda: requeues(), "the teacher's job to be requeued", timeout=180)
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] > 0 and saved["epoch"] < 99, (saved["epoch"], saved["global_step"])

    records = wait_for_jobs(slurm, [row["job_id"] for row in table], exp, timeout=900)
    assert records[teacher]["JobState"] == "COMPLETED"
    runs = requeues()
    for run in runs:  # each run before the last ended by its requeue, before its time limit
        took = timestamp(run["EndTime"]) - timestamp(run["StartTime"])
        assert run["TimeLimit"] == "1" and took.total_seconds() < 60, run
    assert 1 <= len(runs) <= 10  # launcher.max_requeues
    out = (exp / "slurm" / f"{teacher}_0_log.out").read_text()
    caught = f"Caught signal {requeue_signal().name}"
    assert out.count(caught) == out.count("this job is timed-out") == len(runs), out[-3000:]
    assert out.count(f"Requeued job {teacher}") == len(runs), out[-3000:]
    teacher_lines = [line for line in (exp / "cli.log").read_text().splitlines() if "teacher: training for" in line]
    # the first run starts it; each run after a requeue mid-training resumes from its own step's last.ckpt
    assert teacher_lines[0].endswith("training for 100 epochs")
    assert all(line.endswith(f"resuming from {last}") for line in teacher_lines[1:]), teacher_lines
    assert 1 <= len(teacher_lines) - 1 <= len(runs), (teacher_lines, runs)
    assert fingerprint(exp) == fingerprint(reference)
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert (final["epoch"], final["global_step"]) == (reference_last["epoch"], reference_last["global_step"])
