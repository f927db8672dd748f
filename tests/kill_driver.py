"""Runs `mckd-train` in this process and SIGKILLs its own process group at a chosen moment (tests only).

    python tests/kill_driver.py POINT OVERRIDES...

POINT is `train:<step>:<n>` (the n-th training batch of model <step>), `label:<stage>:<n>` (the n-th
pseudo-label written for stage <stage>) or `results` (right after results.json is written).
"""

from __future__ import annotations

import os
import signal
import sys


def die() -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


def arm(point: str) -> None:
    from mckd.modules.segmentation import SegmentationModule
    from mckd.pipeline import orchestrator
    from mckd.pipeline.store import PseudoLabelStore

    kind, *rest = point.split(":")
    count = {"n": 0}

    def hit(limit: int) -> None:
        count["n"] += 1
        if count["n"] >= limit:
            die()

    if kind == "train":
        step, limit = rest[0], int(rest[1])
        original_step = SegmentationModule.training_step

        def training_step(self, batch, batch_idx):
            if self.hparams.name == step:
                hit(limit)
            return original_step(self, batch, batch_idx)

        SegmentationModule.training_step = training_step
    elif kind == "label":
        stage, limit = int(rest[0]), int(rest[1])
        original_write = PseudoLabelStore.write_sample

        def write_sample(self, s, *args, **kwargs):
            if s == stage:
                hit(limit)
            return original_write(self, s, *args, **kwargs)

        PseudoLabelStore.write_sample = write_sample
    elif kind == "results":
        original_results = orchestrator.write_results

        def write_results(*args, **kwargs):
            results = original_results(*args, **kwargs)
            die()
            return results

        orchestrator.write_results = write_results
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    arm(sys.argv[1])
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    from mckd.cli import train

    train()
