"""Shared pytest fixtures."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as mckd.cli sets it; must precede importing torch
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one thread each, and the
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # mckd-train processes the tests start inherit it

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
# `make test` runs two pytest-xdist workers. Each test file runs whole in one worker (its module fixtures are made
# once), and the files of one group here share a worker too
SAME_WORKER = {
    **dict.fromkeys(["test_evaluate.py", "test_notebook.py", "test_pictures.py", "test_predict.py", "test_wandb.py"],
                    "smoke experiment"),  # they read the session's smoke experiment: made once
    **dict.fromkeys(["test_packaging.py", "test_version.py"], "checkout"),  # a wheel build writes mckd.egg-info there
}


def cli_env(root: Path) -> dict[str, str]:
    """The environment for CLI runs in tests: offline W&B with its caches under `root`, no progress bars."""
    return {**os.environ, "WANDB_MODE": "offline", "CI": "true", "PYTHONWARNINGS": "ignore",
            "WANDB_CACHE_DIR": str(root / ".wandb-cache"), "WANDB_CONFIG_DIR": str(root / ".wandb-config"),
            "WANDB_DATA_DIR": str(root / ".wandb-data"), "WANDB_ARTIFACT_DIR": str(root / ".wandb-artifacts")}


@pytest.fixture(scope="session")
def mckd_cli(tmp_path_factory) -> Callable[..., subprocess.CompletedProcess]:
    """`mckd_cli("mckd-eval", "checkpoint=...", check=True)`: a console script of this venv, output captured."""
    root = tmp_path_factory.mktemp("cli")

    def run(command: str, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(BIN / command), *args], capture_output=True, text=True, timeout=600,
                              cwd=cwd or root, env=cli_env(root))
        if check and proc.returncode != 0:
            raise AssertionError(f"{command} {' '.join(args)} exited {proc.returncode}\n"
                                 f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
        return proc

    return run


@pytest.fixture(scope="session")
def smoke_experiment(tmp_path_factory, mckd_cli) -> Path:
    """One `debug=smoke` synthetic experiment with offline W&B (`logger=wandb`), shared by the tests reading it.

    It is made the way an interrupted experiment is resumed: `stage=teacher` first; then the teacher's record is
    removed (as if training stopped after writing last.ckpt) and `stage=all` finishes the experiment. So the
    `teacher` and `pseudo-label` W&B runs are each resumed once, the others made once. Losses are logged at
    every step (`trainer.log_every_n_steps=1`): a smoke epoch has two.
    """
    exp = tmp_path_factory.mktemp("smoke") / "smoke-exp"
    args = ("debug=smoke", "logger=wandb", "trainer.log_every_n_steps=1", f"hydra.run.dir={exp}")
    mckd_cli("mckd-train", *args, "stage=teacher")
    (exp / "steps" / "teacher.json").unlink()
    mckd_cli("mckd-train", *args, "stage=all")
    return exp


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Whole files (SAME_WORKER's groups) to one worker: xdist's `--dist loadfile`, with the groups above. (Not
    `--dist loadgroup`: with pytest 9.2 its `xdist_group` marks do not reach the scheduler, xdist 3.8.)"""
    from xdist.scheduler import LoadFileScheduling

    class FilesAndGroups(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return SAME_WORKER.get(Path(file).name, file)

    return FilesAndGroups(config, log)
