"""How the pipeline's Lightning trainers write files: checkpoints all-or-nothing, CSV logs that survive a resume."""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mckd.atomic import atomic_write
from mckd.pipeline.jobs import LAUNCHED_ENV


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves each checkpoint to a temporary file beside it, then renames it over the old one.

    Lightning's own local save moves a temporary file from the system's temp directory, which is a copy (torn
    when the run is killed during it) wherever that directory is on another filesystem.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        atomic_write(path, lambda f: torch.save(checkpoint, f))


def cluster_plugins() -> list:
    """In a job of mckd's SLURM launcher, Lightning's own SIGUSR1 requeue is off: submitit requeues the job
    (mckd/pipeline/jobs.py StepCommand), and a second `scontrol requeue` from Lightning would race it. Elsewhere
    (no SLURM, or the user's own sbatch script) Lightning's defaults apply."""
    if os.environ.get(LAUNCHED_ENV) == "slurm" and SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []


class ResumingExperimentWriter(ExperimentWriter):
    """A metrics.csv writer that keeps the rows an earlier, interrupted run of the same step wrote.

    When the resumed run logs its first row, the earlier rows from that row's step on are dropped: the resumed
    run repeats those steps from its checkpoint, so what is kept is the history of the model being trained,
    with no step logged twice. (A run that starts over logs from step 0, and so replaces every earlier row.)
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.metrics_keys = csv_header(self.metrics_file_path)  # Lightning rewrites the file with these columns
        self.earlier_rows_unsettled = bool(self.metrics_keys)

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes metrics.csv here; this writer keeps it."""

    def save(self) -> None:
        if self.metrics and self.earlier_rows_unsettled:
            keep_rows_before(self.metrics_file_path, self.metrics_keys, int(self.metrics[0]["step"]))
            self.earlier_rows_unsettled = False
        super().save()


class ResumingCSVLogger(CSVLogger):
    """Lightning's CSVLogger, writing through ResumingExperimentWriter."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ResumingExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def csv_header(path: str) -> list[str]:
    """The column names of a CSV file; [] when there is no such file or it is empty."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def keep_rows_before(path: str, columns: list[str], step: int) -> None:
    """Rewrite a metrics.csv with only its whole rows logged before `step`."""
    with open(path, newline="") as f:
        rows = [row for row in csv.DictReader(f) if whole_row_before(row, step)]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def whole_row_before(row: dict, step: int) -> bool:
    """Whether a metrics.csv row was logged before `step`; False for a row cut short when a run was killed."""
    if None in row or None in row.values():  # more or fewer fields than the header
        return False
    try:
        return int(row.get("step", "")) < step
    except ValueError:
        return False
