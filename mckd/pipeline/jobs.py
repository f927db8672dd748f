"""The experiment as a graph of dependent jobs, submitted to SLURM (`launcher=slurm`) or run on this machine
(`launcher=local`).

Each job is one of mckd-train's split commands (`stage=teacher`, `stage=pairs pair_stage=K member=a`,
`stage=pairs pair_stage=K`, `stage=final`) on the same experiment directory, which is the only state the jobs
share. A job whose records (`steps/<name>.json`) exist is not submitted again, so re-running the command that
submitted an experiment submits what has not finished. Scheduling is SLURM's (`--dependency=afterok`), submission
submitit's; this module only builds the graph and the command lines.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mckd import layout
from mckd.errors import MckdError
from mckd.layout import FINAL, TEACHER, label_step, member_of, student_names

log = logging.getLogger("mckd")

KINDS = ("train", "label")
# overrides that the launcher sets itself in every job's command line
OWN_KEYS = ("launcher", "stage", "pair_stage", "member", "student", "experiment_dir", "trainer.devices",
            "trainer.num_nodes")
LAUNCHED_ENV = "MCKD_LAUNCHER"  # set in every launched job: the launcher that requeues it (see lightning_io.py)


class LauncherError(MckdError, RuntimeError):
    """The jobs cannot be submitted, or one of them failed."""


@dataclass(frozen=True)
class Job:
    name: str                    # teacher, stage1-a, label-stage1, final
    kind: str                    # train | label: which resources it gets (launcher.train / launcher.label)
    overrides: tuple[str, ...]   # the split command's overrides
    records: tuple[str, ...]     # the step records that show it finished
    after: tuple[str, ...] = ()  # the jobs it needs (afterok)


def job_graph(num_stages: int, num_partitions: int) -> list[Job]:
    """teacher (+ stage-0 labels) -> stage 1's members, in parallel -> stage 1's cross-labeling -> ... -> final."""
    jobs = [Job(TEACHER, "train", ("stage=teacher",), (TEACHER, label_step(0)))]
    previous: tuple[str, ...] = (TEACHER,)
    for stage in range(1, num_stages):
        members = student_names(stage, num_partitions)
        for name in members:
            jobs.append(Job(name, "train", ("stage=pairs", f"pair_stage={stage}", f"member={member_of(name)}"),
                            (name,), previous))
        label = label_step(stage)
        jobs.append(Job(label, "label", ("stage=pairs", f"pair_stage={stage}"), (label,), tuple(members)))
        previous = (label,)
    jobs.append(Job(FINAL, "train", ("stage=final",), (FINAL,), previous))
    return jobs


def unfinished(jobs: Sequence[Job], finished: Callable[[str], bool]) -> list[Job]:
    """The jobs with a missing record, each depending only on unfinished jobs."""
    todo = [job for job in jobs if not all(finished(record) for record in job.records)]
    names = {job.name for job in todo}
    return [replace(job, after=tuple(a for a in job.after if a in names)) for job in todo]


def base_overrides(overrides: Iterable[str]) -> list[str]:
    """The user's command-line overrides without those the launcher sets in each job."""
    def key(override: str) -> str:
        return override.split("=", 1)[0].lstrip("+~")

    return [o for o in overrides if not any(key(o) == k or key(o).startswith(k + ".") for k in OWN_KEYS)
            and not key(o).startswith("launcher/")]


def settings(launcher: DictConfig, kind: str) -> dict:
    """The launcher's settings for one kind of job: its top-level values, then `launcher.<kind>`'s that are set."""
    values = OmegaConf.to_container(launcher, resolve=True)
    per_kind = {k: values.pop(k) or {} for k in KINDS if k in values}
    return {**values, **{k: v for k, v in per_kind.get(kind, {}).items() if v is not None}}


def tasks_per_node(resources: dict) -> int:
    """One process (SLURM task) per GPU; one for a CPU job."""
    return max(1, int(resources.get("gpus_per_node") or 0))


def device_overrides(resources: dict) -> list[str]:
    """trainer.devices and trainer.num_nodes from the job's nodes and GPUs per node: they agree by construction."""
    return [f"trainer.devices={tasks_per_node(resources)}", f"++trainer.num_nodes={int(resources.get('nodes') or 1)}"]


def command(job: Job, base: Sequence[str], experiment_dir: Path, resources: dict, python: str | None = None) -> list[str]:
    """The job's mckd-train command line."""
    return [python or sys.executable, "-m", "mckd.cli", *base, f"hydra.run.dir={experiment_dir}", *job.overrides,
            *device_overrides(resources)]


class StepCommand:
    """One job's command, run by submitit on every task of the job.

    Requeueing is submitit's: on its signal (`requeue_signal`, SIGUSR2) `launcher.signal_delay_s` before the time
    limit (or on pre-emption) the job's first task calls `checkpoint`, which resubmits this same command, and
    requeues the job under its id, so the jobs that depend on it keep waiting for it; the command run again resumes
    the step from its last checkpoint, as any re-run does. SLURM signals every process of the job step: the
    command itself ignores that signal (it ends when submitit's handler has requeued the job), and Lightning's own
    requeue handler is off in launched jobs (lightning_io.cluster_plugins), so the job is requeued once.
    """

    def __init__(self, name: str, argv: list[str], log_hint: str = ""):
        self.name, self.argv, self.log_hint = name, argv, log_hint

    def __call__(self) -> int:
        env = {**os.environ, LAUNCHED_ENV: "slurm"}
        ignored = requeue_signal()
        code = subprocess.run(self.argv, env=env, preexec_fn=lambda: signal.signal(ignored, signal.SIG_IGN)).returncode
        if code != 0:
            raise LauncherError(f"step {self.name} failed (mckd-train exited {code}); its log is above "
                                f"{self.log_hint}; fix the cause and re-run the command that submitted the experiment")
        return code

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(StepCommand(self.name, self.argv, self.log_hint))


def requeue_signal() -> signal.Signals:
    """The signal submitit asks SLURM for before the time limit (`--signal`) and requeues on: SIGUSR2, or the one
    that SUBMITIT_PREEMPT_SIGNAL names."""
    import submitit

    return signal.Signals["SIG" + submitit.JobEnvironment.USR_SIG]


# -- launching ---------------------------------------------------------------------------------------------------
def launch(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Submit (slurm) or run (local) the experiment's unfinished jobs."""
    name = cfg.launcher.name
    if cfg.stage != "all" or cfg.get("pair_stage") is not None or cfg.get("member") is not None:
        raise LauncherError(f"launcher={name} runs the whole experiment as jobs; drop stage=, pair_stage= and member= "
                            f"(got stage={cfg.stage}, pair_stage={cfg.get('pair_stage')}, member={cfg.get('member')})")
    experiment_dir = Path(cfg.experiment_dir).absolute()
    jobs = unfinished(job_graph(cfg.num_stages, cfg.num_partitions),
                      lambda step: layout.record_path(experiment_dir, step).is_file())
    if not jobs:
        log.info("%s: every step has finished; nothing to run (results: %s)", experiment_dir,
                 experiment_dir / layout.RESULTS)
        return
    base = base_overrides(overrides)
    if name == "slurm":
        submit_slurm(cfg.launcher, jobs, base, experiment_dir)
    elif name == "local":
        run_local(cfg.launcher, jobs, base, experiment_dir)
    else:
        raise LauncherError(f"launcher={name}: unknown launcher (expected none, slurm or local)")


def on_node_local_storage(path: Path) -> bool:
    return any(path == Path(p) or Path(p) in path.parents for p in ("/tmp", "/var/tmp", "/dev/shm"))


def submit_slurm(launcher: DictConfig, jobs: Sequence[Job], base: Sequence[str], experiment_dir: Path) -> dict[str, str]:
    """sbatch every job through submitit, each with `--dependency=afterok:<the jobs it needs>`; returns step -> id."""
    if shutil.which("sbatch") is None:
        raise LauncherError("launcher=slurm: no `sbatch` on PATH; run this on a SLURM login node (or load the site's "
                            "slurm module), or run the jobs on this machine with launcher=local")
    if on_node_local_storage(experiment_dir):
        log.warning("launcher=slurm: the experiment directory %s is under /tmp, which the compute nodes may not see "
                    "(each has its own); set hydra.run.dir to a shared filesystem", experiment_dir)
    import submitit
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    folder = Path(launcher.get("folder") or experiment_dir / layout.SLURM).absolute()
    if queued := queued_jobs(folder, experiment_dir):
        raise LauncherError(
            f"launcher=slurm: {len(queued)} jobs of {experiment_dir} are still queued or running ("
            + ", ".join(f"{i} {step}" for i, step in queued.items())
            + f"); wait for them (squeue --jobs={','.join(queued)}) or scancel them, then re-run the same command")
    ids: dict[str, str] = {}
    for job in jobs:
        resources = settings(launcher, job.kind)
        executor = submitit.SlurmExecutor(folder=folder, python=resources.get("python"),
                                          max_num_timeout=int(resources.get("max_requeues", 3)))
        executor.update_parameters(**sbatch_parameters(job, resources, [ids[a] for a in job.after]))
        argv = command(job, base, experiment_dir, resources, resources.get("python"))
        try:
            submitted = executor.submit(StepCommand(job.name, argv, f"in {folder}/<job id>_0_log.out/.err"))
        except (FailedJobError, FailedSubmissionError, OSError) as err:
            cancel(ids)
            reason = last_line(str(err))
            raise LauncherError(
                f"launcher=slurm: sbatch rejected job {job.name}: {reason}; check launcher.partition, account, qos, "
                f"constraint and the resources (sbatch script: {folder}), then re-run the same command"
                + (f" (the {len(ids)} jobs submitted before it were cancelled)" if ids else "")) from None
        ids[job.name] = submitted.job_id
    write_job_table(folder, jobs, ids, experiment_dir)
    print_summary(jobs, ids, folder, experiment_dir)
    return ids


def queued_jobs(folder: Path, experiment_dir: Path) -> dict[str, str]:
    """The experiment's earlier jobs (its job table) that SLURM still has queued or running: job id -> step."""
    table = folder / layout.JOB_TABLE
    if not table.is_file():
        return {}
    rows = [json.loads(line) for line in table.read_text().splitlines() if line.strip()]
    ours = {row["job_id"]: row["step"] for row in rows if row.get("experiment_dir") == str(experiment_dir)}
    user = os.environ.get("USER") or getpass.getuser()
    proc = subprocess.run(["squeue", "-h", "-u", user, "-o", "%i"], capture_output=True, text=True)
    alive = set(proc.stdout.split()) if proc.returncode == 0 else set()
    return {job_id: step for job_id, step in ours.items() if job_id in alive}


def sbatch_parameters(job: Job, resources: dict, after: Sequence[str]) -> dict:
    """submitit's SlurmExecutor parameters for one job."""
    gpus = int(resources.get("gpus_per_node") or 0)
    params = {"job_name": f"mckd-{job.name}", "time": int(resources["time_min"]), "nodes": int(resources.get("nodes") or 1),
              "ntasks_per_node": tasks_per_node(resources), "cpus_per_task": resources.get("cpus_per_task"),
              "gpus_per_node": gpus or None, "partition": resources.get("partition"),
              "account": resources.get("account"), "qos": resources.get("qos"),
              "constraint": resources.get("constraint"), "signal_delay_s": int(resources.get("signal_delay_s", 120)),
              "setup": list(resources.get("setup") or []) or None, "stderr_to_stdout": False,
              "additional_parameters": {"kill-on-invalid-dep": "yes", **(resources.get("additional") or {})}}
    if resources.get("mem_gb"):
        params["mem"] = f"{resources['mem_gb']}GB"
    if after:
        params["dependency"] = "afterok:" + ":".join(after)
    return {k: v for k, v in params.items() if v is not None}


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no output)"])[-1]


def cancel(ids: dict[str, str]) -> None:
    if ids:
        subprocess.run(["scancel", *ids.values()], capture_output=True)


def write_job_table(folder: Path, jobs: Sequence[Job], ids: dict[str, str], experiment_dir: Path) -> None:
    """Append this submission's jobs to the folder's job table (job id, step, what it waits for)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / layout.JOB_TABLE).open("a") as f:
        for job in jobs:
            f.write(json.dumps({"job_id": ids[job.name], "step": job.name, "kind": job.kind,
                                "after": [ids[a] for a in job.after], "experiment_dir": str(experiment_dir),
                                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def print_summary(jobs: Sequence[Job], ids: dict[str, str], folder: Path, experiment_dir: Path) -> None:
    rows = [("job id", "step", "after")] + [(ids[j.name], j.name, ",".join(ids[a] for a in j.after) or "-")
                                            for j in jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    print("\n".join([f"submitted {len(jobs)} jobs for {experiment_dir}:", *lines,
                     f"watch: squeue --jobs={','.join(ids[j.name] for j in jobs)}   "
                     f"(logs: {folder}/<job id>_0_log.out and .err; finished steps: {experiment_dir / layout.RECORDS}/)",
                     "resume or retry: re-run this same command; it submits only the steps that have not finished"]),
          flush=True)


def run_local(launcher: DictConfig, jobs: Sequence[Job], base: Sequence[str], experiment_dir: Path) -> None:
    """Run the jobs here as processes, each as soon as the jobs it needs finished (pair members at the same time),
    each pair member on its own `gpus_per_job` GPUs; CPU jobs that run side by side share the cores
    (`OMP_NUM_THREADS`, unless already set); logs in `<experiment>/jobs/<step>.log`."""
    log_dir = experiment_dir / layout.JOBS
    log_dir.mkdir(parents=True, exist_ok=True)
    per_job = int(launcher.get("gpus_per_job") or 0)
    gpus = [str(g) for g in (launcher.get("gpus") or visible_gpus())] if per_job else []
    slots = max(1, len(gpus) // per_job) if per_job else int(launcher.get("max_parallel") or 1 << 30)
    if per_job and len(gpus) < per_job:
        raise LauncherError(f"launcher=local: gpus_per_job={per_job} but only {len(gpus)} GPUs are visible "
                            f"({','.join(gpus) or 'none'}); lower launcher.gpus_per_job or set launcher.gpus")
    done: set[str] = set()
    waiting = list(jobs)
    running: dict[str, tuple[subprocess.Popen, list[str]]] = {}
    free = list(gpus)
    try:
        while waiting or running:
            ready = [j for j in waiting if set(j.after) <= done]
            starting = ready[:max(0, slots - len(running))]
            threads = share_cores(len(running) + len(starting), default_threads()) if starting and not per_job else None
            for job in starting:
                mine, free = (free[:per_job], free[per_job:]) if per_job else ([], free)
                resources = {"gpus_per_node": per_job, "nodes": 1}
                env = {**os.environ, LAUNCHED_ENV: "local"}
                if per_job:
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
                elif threads is not None:
                    env.setdefault("OMP_NUM_THREADS", str(threads))
                argv = command(job, base, experiment_dir, resources)
                with (log_dir / f"{job.name}.log").open("ab") as out:
                    out.write(f"$ {shlex.join(argv)}\n".encode())
                    out.flush()
                    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
                log.info("%s: started (pid %d, GPUs %s, threads %s, log %s)", job.name, proc.pid,
                         ",".join(mine) or "-", env.get("OMP_NUM_THREADS", "-"), log_dir / f"{job.name}.log")
                running[job.name] = (proc, mine)
                waiting.remove(job)
            time.sleep(0.5)
            for name, (proc, mine) in list(running.items()):
                if (code := proc.poll()) is None:
                    continue
                del running[name]
                free.extend(mine)
                if code != 0:
                    raise LauncherError(f"launcher=local: step {name} failed (exit {code}); see "
                                        f"{log_dir / (name + '.log')}; fix the cause and re-run the same command")
                done.add(name)
                log.info("%s: finished", name)
    finally:
        for proc, _ in running.values():
            proc.terminate()
            proc.wait()


def share_cores(together: int, threads: int) -> int | None:
    """OMP_NUM_THREADS for each of `together` CPU jobs running side by side: torch's default `threads` (one per
    core) shared among them, rounded down, at least 1, since each would otherwise start a thread per core
    (docs/benchmarks.md). None for a job that runs alone: it keeps torch's default."""
    return max(1, threads // together) if together > 1 else None


def default_threads() -> int:
    """torch's intra-op thread count in this process (the launcher's): one per core it may use."""
    import torch

    return torch.get_num_threads()


def visible_gpus() -> list[str]:
    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [g for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]
