"""One writer per step: a second process that would train or label the same step of an experiment stops.

Each step that writes (`teacher`, `stage1-a`, ..., `label-stage<k>`, `final`) holds `<exp>/locks/<step>.lock`
while it runs; pair members are different steps, so they still run in parallel. What this relies on:
- the lock file is created with O_CREAT|O_EXCL, which is atomic on the filesystem holding the experiment
  (local disks, NFSv3 and later, Lustre, GPFS); on a filesystem where it is not, two writers can slip through;
- a lock left by a process that is gone is taken over, with a warning, only when it was taken on this host,
  where its pid can be checked; a lock from another host is never taken over: the message says to delete it.
Under DDP only rank 0 takes the lock; the other ranks learn from it whether it was taken.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mckd.errors import MckdError
from mckd.layout import lock_path
from mckd.pipeline.experiment import is_rank_zero

log = logging.getLogger("mckd")


class StepLockedError(MckdError, RuntimeError):
    """Another process is running (or was running) the same step of the same experiment."""


def holder() -> dict[str, Any]:
    """What a lock file records about the process that holds it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def read_holder(path: Path) -> dict[str, Any] | None:
    """The lock's holder; None when the file is empty or unreadable (its writer died while creating it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def is_stale(owner: dict[str, Any] | None) -> bool:
    """A lock whose holder ran on this host and is gone."""
    return owner is not None and owner.get("host") == socket.gethostname() and not pid_alive(int(owner["pid"]))


def create(path: Path) -> bool:
    """Create the lock file for this process; False when it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(holder(), f)
    return True


def locked_message(path: Path, step: str, owner: dict[str, Any] | None) -> str:
    if owner is None:
        return (f"step {step} is locked by {path}, which names no holder (its writer may have died while creating "
                f"it): if no other run of this experiment is going on, delete {path} and re-run")
    who = f"pid {owner.get('pid')} on host {owner.get('host')} since {owner.get('started')}"
    if owner.get("host") != socket.gethostname():
        return (f"step {step} is being run by {who} ({path}); a lock from another host is never taken over "
                f"automatically: if that run is gone, delete {path} by hand and re-run")
    return (f"step {step} is being run by {who} ({path}): wait for it to finish, or run another step "
            f"(pair members: member=a, member=b, ...)")


def acquire(path: Path, step: str) -> None:
    """Take the lock, or take over a stale one from this host; StepLockedError when it is held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if create(path):
        return
    owner = read_holder(path)
    if not is_stale(owner):
        raise StepLockedError(locked_message(path, step, owner))
    log.warning("%s: taking over the lock of pid %s (started %s), which is gone", path, owner["pid"], owner["started"])
    # two processes taking over the same stale lock at the same instant could both get here; the window is the
    # time between reading the holder and deleting the file
    path.unlink(missing_ok=True)
    if not create(path):
        raise StepLockedError(locked_message(path, step, read_holder(path)))


def taken_on_every_rank(taken: bool) -> bool:
    """Rank 0's answer on every rank, so that no rank goes on alone; `taken` itself when not distributed."""
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return taken
    answer = [taken]
    torch.distributed.broadcast_object_list(answer, src=0)
    return bool(answer[0])


@contextmanager
def step_lock(directory: str | Path, step: str) -> Iterator[None]:
    """Hold `<directory>/locks/<step>.lock` (rank 0) for the duration of the block."""
    path = lock_path(directory, step)
    error = None
    if is_rank_zero():
        try:
            acquire(path, step)
        except StepLockedError as err:
            error = err
    if not taken_on_every_rank(error is None):
        raise error or StepLockedError(f"step {step}: rank 0 could not take {path}")
    try:
        yield
    finally:
        if is_rank_zero():
            path.unlink(missing_ok=True)


def one_writer(step_of: Callable[..., str]) -> Callable:
    """Decorate a Pipeline method so that it runs under the lock of the step that `step_of(*args)` names."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def locked(pipeline, *args, **kwargs):
            with step_lock(pipeline.exp.dir, step_of(*args, **kwargs)):
                return method(pipeline, *args, **kwargs)

        return locked

    return decorate
