"""Seeds derived from the experiment seed and a name, so that every step's randomness is its own.

A step (one model's training, one labeling pass) that seeds itself from `step_seed(seed, name)` draws the
same numbers whether it runs after other steps in one process, alone in its own process, or after a resume.
"""

from __future__ import annotations

import zlib


def derive_seed(seed: int, *names: object) -> int:
    """A 31-bit seed from `seed` and `names` (stable across processes and Python versions, unlike hash())."""
    return zlib.crc32(":".join(str(n) for n in (seed, *names)).encode()) & 0x7FFF_FFFF


def step_seed(seed: int, step: str) -> int:
    """The seed of the step called `step` (e.g. `teacher`, `stage1-a`, `label-stage0`)."""
    return derive_seed(seed, "step", step)
