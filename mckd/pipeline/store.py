"""The pseudo-label store: per stage and sample, a hard label PNG, a confidence PNG and optional soft labels.

Layout under `<experiment>/pseudo_labels/stage<k>/`:
    labels/<id>.png      class ids (uint8; uint16 past 255 classes)
    confidence/<id>.png  max class probability quantized to uint8
    soft/<id>.npz        top-k class ids and their fp16 probabilities (when soft_topk > 0)
    stability/<id>.json  how stable the labeler's prediction was over its training (pseudo.reliable_fraction)
    manifest.json        written last and atomically; a stage without it is not complete; with
                         pseudo.reliable_fraction, `unreliable` lists the images students of this stage skip
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from mckd import layout
from mckd.atomic import atomic_write, png_bytes, read_json, write_json
from mckd.errors import MckdError


class IncompleteStageError(MckdError, RuntimeError):
    """A pseudo-label stage was asked for but its manifest is missing or incomplete."""


UNRELIABLE = "unreliable"  # the manifest's key for the ids pseudo.reliable_fraction leaves out
SUBDIRS = ("labels", "confidence", "soft", "stability")


def label_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 255 else np.uint16


class StageReader:
    """Reads one complete stage's labels from disk, one sample at a time (nothing is cached)."""

    def __init__(self, directory: Path, manifest: dict):
        self.directory, self.manifest = directory, manifest

    def read(self, sample_id: str) -> dict[str, np.ndarray]:
        out = {}
        with Image.open(self.directory / "labels" / f"{sample_id}.png") as img:
            out["label"] = np.asarray(img)
        with Image.open(self.directory / "confidence" / f"{sample_id}.png") as img:
            out["confidence"] = np.asarray(img)
        soft = self.directory / "soft" / f"{sample_id}.npz"
        if soft.is_file():
            with np.load(soft) as data:
                out["soft_ids"], out["soft_probs"] = data["ids"], data["probs"]
        return out

    @property
    def unreliable(self) -> frozenset[str]:
        """The ids the stage's students leave out (pseudo.reliable_fraction); empty without the option."""
        return frozenset(self.manifest.get(UNRELIABLE, ()))


class PseudoLabelStore:
    """All pseudo-label stages of one experiment."""

    def __init__(self, root: str | Path, num_classes: int):
        self.root = Path(root)
        self.num_classes = num_classes

    def stage_dir(self, stage: int) -> Path:
        return layout.label_stage_dir(self.root, stage)

    def manifest_path(self, stage: int) -> Path:
        return self.stage_dir(stage) / "manifest.json"

    def write_sample(self, stage: int, sample_id: str, label: np.ndarray, confidence: np.ndarray,
                     soft_ids: np.ndarray | None = None, soft_probs: np.ndarray | None = None,
                     stability: float | None = None) -> int:
        """Write one sample's labels atomically; returns the bytes written."""
        d = self.stage_dir(stage)
        # the fastest zlib level: these are written in the labeling loop, where throughput matters more
        label_png = png_bytes(np.asarray(label).astype(label_dtype(self.num_classes)), compress_level=1)
        conf = np.clip(np.rint(np.asarray(confidence, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
        conf_png = png_bytes(conf, compress_level=1)
        atomic_write(d / "labels" / f"{sample_id}.png", lambda f: f.write(label_png))
        atomic_write(d / "confidence" / f"{sample_id}.png", lambda f: f.write(conf_png))
        size = len(label_png) + len(conf_png)
        if soft_ids is not None:
            buf = io.BytesIO()
            np.savez(buf, ids=np.asarray(soft_ids).astype(label_dtype(self.num_classes)),
                     probs=np.asarray(soft_probs).astype(np.float16))
            atomic_write(d / "soft" / f"{sample_id}.npz", lambda f: f.write(buf.getvalue()))
            size += buf.tell()
        if stability is not None:
            write_json(self.stability_path(stage, sample_id), {"stability": float(stability)})
        return size

    def stability_path(self, stage: int, sample_id: str) -> Path:
        return self.stage_dir(stage) / "stability" / f"{sample_id}.json"

    def stability(self, stage: int, sample_ids: Iterable[str]) -> dict[str, float]:
        """The stored stability score of each sample."""
        return {i: float(read_json(self.stability_path(stage, i))["stability"]) for i in sample_ids}

    def missing(self, stage: int, sample_ids: Iterable[str], stability: bool = False) -> list[str]:
        """The samples whose label or confidence (and, with `stability`, stability score) is not on disk."""
        labels = self.stage_dir(stage) / "labels"
        return [i for i in sample_ids if not (labels / f"{i}.png").is_file()
                or not (self.stage_dir(stage) / "confidence" / f"{i}.png").is_file()
                or (stability and not self.stability_path(stage, i).is_file())]

    def write_manifest(self, stage: int, manifest: dict) -> None:
        """Seal a stage: check every listed sample is on disk, then write the manifest atomically."""
        ids = [i for part in manifest["partitions"] for i in part["ids"]]
        missing = self.missing(stage, ids, stability=UNRELIABLE in manifest)
        if missing:
            raise IncompleteStageError(f"stage {stage}: {len(missing)} labels missing, e.g. {missing[:3]}")
        labels = self.stage_dir(stage)
        nbytes = sum(f.stat().st_size for sub in SUBDIRS if (labels / sub).is_dir()
                     for f in (labels / sub).iterdir() if not f.name.startswith("."))
        write_json(self.manifest_path(stage), {**manifest, "stage": stage, "num_samples": len(ids),
                                               "bytes": nbytes, "complete": True})

    def manifest(self, stage: int) -> dict | None:
        """The stage's manifest if the stage is complete, else None."""
        path = self.manifest_path(stage)
        if not path.is_file():
            return None
        data = read_json(path)
        return data if data.get("complete") else None

    def reader(self, stage: int) -> StageReader:
        manifest = self.manifest(stage)
        if manifest is None:
            raise IncompleteStageError(
                f"pseudo-labels of stage {stage} are missing or incomplete (no complete {self.manifest_path(stage)}): "
                "run the steps before this one first (stage=teacher makes stage 0, stage=pairs the later ones)")
        return StageReader(self.stage_dir(stage), manifest)
