"""How the pipeline's Lightning trainers write files: checkpoints all-or-nothing."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mckd.pipeline.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves each checkpoint to a temporary file beside it, then renames it over the old one.

    Lightning's own local save moves a temporary file from the system's temp directory, which is a copy (torn
    when the run is killed during it) wherever that directory is on another filesystem.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        atomic_write(path, lambda f: torch.save(checkpoint, f))
