"""tqdm progress bars for the package's own long loops, shown exactly when Lightning's are (`show_progress`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def show_progress() -> bool:
    """Progress bars (Lightning's and ours) only on an interactive terminal and never under CI."""
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "img") -> Iterable[T]:
    """`iterable` behind a progress bar on an interactive terminal; the bare iterable under CI or a pipe."""
    if not show_progress():
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False)
