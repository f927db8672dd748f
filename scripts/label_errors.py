"""How a stage's pseudo-labels relate to the previous stage's: which of its errors they repeat, fix or add.

Both stages are compared with the unlabeled split's ground truth, pixel by pixel (ignore pixels left out), on the
samples of the stage's manifest. With --frames, also how close each sample's video frame is to a frame of another
partition (cross-labeling assumes a student never saw what it labels; neighbouring frames are nearly the same).

    python scripts/label_errors.py outputs/cq/run2/seed0/camvid_mckd --stage 1 --frames '^(.+)_f?(\\d+)$'
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from mckd import layout
from mckd.data.datamodule import SegmentationData
from mckd.data.source import IGNORE_INDEX
from mckd.pipeline.store import PseudoLabelStore


def error_counts(data: SegmentationData, store: PseudoLabelStore, stage: int) -> dict[str, float]:
    before, after = store.reader(stage - 1), store.reader(stage)
    by_id = {s.id: s for s in data.splits.unlabeled}
    ids = [i for part in after.manifest["partitions"] for i in part["ids"]]
    valid = prev_wrong = repeated = fixed = new_wrong = same = 0
    for sample_id in ids:
        truth = data.source.read_mask(by_id[sample_id])
        old, new = before.read(sample_id)["label"], after.read(sample_id)["label"]
        known = truth != IGNORE_INDEX
        wrong = known & (old != truth)
        valid += known.sum()
        prev_wrong += wrong.sum()
        repeated += (wrong & (new == old)).sum()
        fixed += (wrong & (new == truth)).sum()
        new_wrong += (known & (old == truth) & (new != truth)).sum()
        same += (known & (new == old)).sum()
    return {"samples": len(ids), "prev_error": prev_wrong / valid, "repeated": repeated / prev_wrong,
            "fixed": fixed / prev_wrong, "new_errors": new_wrong / valid, "agreement": same / valid}


def frame_of(sample_id: str, pattern: str) -> tuple[str, str]:
    match = re.match(pattern, sample_id)
    if match is None or len(match.groups()) != 2:
        raise SystemExit(f"--frames {pattern!r}: expected two groups (sequence, frame number) in sample id {sample_id!r}")
    return match.groups()


def frame_gaps(manifest: dict, pattern: str) -> dict[str, float]:
    """Share of samples with a frame of another partition at most 1 and 2 frame steps away (same sequence)."""
    frames = [[frame_of(i, pattern) for i in part["ids"]] for part in manifest["partitions"]]
    steps = {}
    for seq in {s for part in frames for s, _ in part}:
        numbers = sorted(int(f) for part in frames for s, f in part if s == seq)
        steps[seq] = float(np.median(np.diff(numbers))) if len(numbers) > 1 else 1.0
    gaps = []
    for j, part in enumerate(frames):
        others = [(s, int(f)) for k, p in enumerate(frames) if k != j for s, f in p]
        for seq, f in part:
            near = [abs(int(f) - g) for s, g in others if s == seq]
            gaps.append(min(near) / steps[seq] if near else np.inf)
    gaps = np.asarray(gaps)
    return {"neighbour_within_1_step": float(np.mean(gaps <= 1)), "neighbour_within_2_steps": float(np.mean(gaps <= 2))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--stage", type=int, default=1, help="compare stage K's labels with stage K-1's")
    parser.add_argument("--frames", help="regex over sample ids with two groups: sequence and frame number")
    args = parser.parse_args()
    cfg = OmegaConf.load(args.experiment / ".hydra" / "config.yaml")
    data = SegmentationData.build(cfg.dataset)
    store = PseudoLabelStore(layout.pseudo_label_dir(args.experiment), data.num_classes)
    result = error_counts(data, store, args.stage)
    if args.frames:
        result.update(frame_gaps(store.reader(args.stage).manifest, args.frames))
    print("RESULT " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    print(json.dumps({k: float(v) for k, v in result.items()}))


if __name__ == "__main__":
    main()
