"""The names of an experiment's steps and where each artifact lives in its directory: the one place that spells them.

Every other module, the scripts and the tests ask this one; renaming a step or a folder here renames it everywhere.

    <experiment>/
      .hydra/config.yaml           the composed config (Hydra)
      identity.json                what the experiment's figures depend on (pipeline/identity.py)
      steps/<step>.json            a step's record, written when the step ends
      checkpoints/<step>/          best.ckpt and last.ckpt of a model step (the teacher's epoch<n>.ckpt too, with
                                   pseudo.reliable_fraction: itself after n epochs)
      pseudo_labels/stage<k>/      stage k's labels, confidences and manifest (pipeline/store.py)
      logs/<step>/                 Lightning's CSV logs
      lightning/<step>/            Lightning's own root for the step (SLURM requeue checkpoints)
      slurm/, jobs/                launcher=slurm: job table and logs; launcher=local: job logs (pipeline/jobs.py)
      locks/<step>.lock            held by the process writing the step
      results.json, results.md     the summary of every step (pipeline/results.py)
      stages.png                   val and pseudo-label mIoU by stage (pipeline/results.py)
      qualitative.png, class_distribution.png (+ .json)    pipeline/pictures.py
      cli.log                      Hydra's job log, and every error line (errors.py)
      eval/                        mckd-eval's reports on the experiment's checkpoints (evaluate.py)
      wandb/, wandb.json           offline W&B runs and the experiment's run-id prefix (pipeline/wandb_logging.py)

Inside `pseudo_labels/stage<k>/` the store owns its own layout (labels/, confidence/, soft/, manifest.json).
"""

from __future__ import annotations

import re
from pathlib import Path

TEACHER = "teacher"
FINAL = "final"
LABEL_PREFIX = "label-stage"

CONFIG = Path(".hydra") / "config.yaml"
OVERRIDES = Path(".hydra") / "overrides.yaml"
IDENTITY = "identity.json"
RECORDS = "steps"
CHECKPOINTS = "checkpoints"
PSEUDO_LABELS = "pseudo_labels"
LOGS = "logs"
LIGHTNING = "lightning"  # each step's own Lightning root: a SLURM requeue's hpc_ckpt_* never reaches another step
SLURM = "slurm"          # launcher=slurm: the job table (JOB_TABLE) and the jobs' logs
JOB_TABLE = "jobs.jsonl"  # in the SLURM folder: one line per submitted job (id, step, what it waits for)
JOBS = "jobs"            # launcher=local: the jobs' logs
LOCKS = "locks"
CLI_LOG = "cli.log"  # Hydra names the job log after the module that runs it, mckd/cli.py
EVAL = "eval"
WANDB = "wandb"
WANDB_IDS = "wandb.json"
RESULTS = "results.json"
RESULTS_TABLE = "results.md"
BEST = "best"  # ModelCheckpoint's file name (without .ckpt) for the best validation epoch
LAST = "last.ckpt"  # Lightning's name for the checkpoint of the last epoch, resumed from
SNAPSHOT = "epoch{}.ckpt"  # a model after that many epochs (pseudo.reliable_fraction's earlier checkpoints)
PICTURES = {"stages": "stages.png", "qualitative": "qualitative.png", "class_distribution": "class_distribution.png"}

_STUDENT = re.compile(r"^stage(\d+)-([a-z])$")


def student_names(stage: int, num_partitions: int) -> list[str]:
    """stage1-a, stage1-b, ...: member i of pair stage `stage` trains on partition i."""
    return [f"stage{stage}-{chr(ord('a') + i)}" for i in range(num_partitions)]


def member_of(step: str) -> str | None:
    """The member letter of a pair student (`stage1-b` -> `b`); None for any other step."""
    match = _STUDENT.match(step)
    return match.group(2) if match else None


def label_step(stage: int) -> str:
    """The step that writes stage `stage`'s pseudo-labels (stage 0: the teacher's)."""
    return f"{LABEL_PREFIX}{stage}"


def is_label_step(step: str) -> bool:
    return step.startswith(LABEL_PREFIX)


def model_steps(num_stages: int, num_partitions: int) -> list[str]:
    """The steps that train a model, in the order they run: teacher, each pair stage's members, final."""
    students = [name for k in range(1, num_stages) for name in student_names(k, num_partitions)]
    return [TEACHER, *students, FINAL]


def all_steps(num_stages: int, num_partitions: int) -> list[str]:
    """Every step in the order it runs, labeling included."""
    steps = [TEACHER, label_step(0)]
    for k in range(1, num_stages):
        steps += [*student_names(k, num_partitions), label_step(k)]
    return [*steps, FINAL]


def record_path(experiment: str | Path, step: str) -> Path:
    return Path(experiment) / RECORDS / f"{step}.json"


def checkpoint_dir(experiment: str | Path, step: str) -> Path:
    return Path(experiment) / CHECKPOINTS / step


def best_checkpoint(experiment: str | Path, step: str) -> Path:
    return checkpoint_dir(experiment, step) / f"{BEST}.ckpt"


def last_checkpoint(experiment: str | Path, step: str) -> Path:
    return checkpoint_dir(experiment, step) / LAST


def snapshot_checkpoint(experiment: str | Path, step: str, epochs: int) -> Path:
    """`step`'s model as it was after `epochs` epochs."""
    return checkpoint_dir(experiment, step) / SNAPSHOT.format(epochs)


def lightning_dir(experiment: str | Path, step: str) -> Path:
    return Path(experiment) / LIGHTNING / step


def lock_path(experiment: str | Path, step: str) -> Path:
    return Path(experiment) / LOCKS / f"{step}.lock"


def pseudo_label_dir(experiment: str | Path) -> Path:
    return Path(experiment) / PSEUDO_LABELS


def label_stage_dir(store_root: str | Path, stage: int) -> Path:
    """One stage's folder in a pseudo-label store (`pseudo_label_dir` of an experiment)."""
    return Path(store_root) / f"stage{stage}"


def finished_model_steps(experiment: str | Path) -> list[str]:
    """The model steps (labeling excluded) whose records exist."""
    return sorted(path.stem for path in (Path(experiment) / RECORDS).glob("*.json") if not is_label_step(path.stem))
