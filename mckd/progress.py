"""tqdm progress bars for the package's own long loops, shown exactly when Lightning's are (`show_progress`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "img") -> Iterable[T]:
    """`iterable` behind a progress bar on an interactive terminal; the bare iterable under CI or a pipe."""
    # imported here: the orchestrator imports modules that use this one
    from mckd.pipeline.orchestrator import show_progress

    if not show_progress():
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False)
