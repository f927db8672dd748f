"""Data loading headroom: can the default training loader feed the default student's training step?

Loader: a training DataModule's `train_dataloader()` with the dataset config's crop, batch size and
num_workers, iterated without a model, for the teacher's set (`LabeledDataModule`: ground truth) and a student's
set (`PseudoLabelDataModule`: images plus stored pseudo-labels read from a PseudoLabelStore, the student's stronger
augmentation, and the labeled split mixed in as `labeled_weight` asks). Timed after `warmup` batches (worker
start-up), over epoch boundaries. Step: forward + backward + AdamW step of the default student model
(`model@student`) on batches loaded beforehand (already on the device). `loader_headroom` = the slower
loader's img/s / the step's img/s (target >= 2: loading keeps up even when it shares the CPU with the step).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import bench_common as bc


def loader_rate(dm, batches: int, warmup: int) -> float:
    loader = dm.train_dataloader()
    seen = 0
    start = None
    done = 0
    while done < batches + warmup:
        for batch in loader:
            done += 1
            if done == warmup:
                start = bc.now("cpu")
            elif done > warmup:
                seen += len(batch["image"])
            if done == batches + warmup:
                break
    return seen / (bc.now("cpu") - start)


def step_rate(cfg, dm, device: str, batches: list[dict], repeats: int) -> float:
    import torch

    from mckd.models import build_model, model_config

    net = build_model(model_config(cfg.student, cfg.dataset.crop_size), dm.num_classes).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    data = [(b["image"].to(device), b["mask"].to(device)) for b in batches]
    if device == "cuda":
        torch.backends.cudnn.benchmark = bool(cfg.trainer.get("benchmark", False))

    def step(images, masks):
        bc.plain_train_step(net, opt, images, masks, cfg, device)

    step(*data[0])  # warm-up
    start = bc.now(device)
    for _ in range(repeats):
        for images, masks in data:
            step(images, masks)
    return repeats * sum(len(x) for x, _ in data) / (bc.now(device) - start)


def fake_stage(pipe) -> None:
    """Stage 0 pseudo-labels for every unlabeled image: its ground truth, confidence 0.9."""
    import numpy as np

    store, source = pipe.exp.store, pipe.data.source
    samples = pipe.data.splits.unlabeled
    for s in samples:
        mask = source.read_mask(s)
        store.write_sample(0, s.id, mask, np.full(mask.shape, 0.9, np.float32))
    store.write_manifest(0, {"partitions": [{"index": 0, "ids": [s.id for s in samples], "labeled_by": ["gt"]}],
                             "trained_on": {}})


def main() -> None:
    p = bc.parser("loader", __doc__)
    p.add_argument("--batches", type=int, help="timed batches per loader (default: 6 quick, 60 full)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per loader (default 2)")
    p.add_argument("--step-batches", type=int, help="timed training steps (default: 2 quick; full: 8 cpu, 40 cuda)")
    args = p.parse_args()
    bc.setup(args)
    batches = args.batches or (6 if args.quick else 60)
    step_batches = args.step_batches or (2 if args.quick else 40 if args.device == "cuda" else 8)

    import lightning as L
    from omegaconf import OmegaConf

    from mckd.data import LabeledDataModule
    from mckd.layout import FINAL
    from mckd.pipeline.orchestrator import Pipeline

    work = Path(tempfile.mkdtemp(prefix="mckd-bench-loader-"))
    overrides = [f"experiment_dir={work}"]
    if args.quick:
        overrides += ["dataset.params.num_train=120", "dataset.batch_size=8"]
    cfg = bc.compose_config(args.device, [*overrides, *args.override])
    L.seed_everything(0, verbose=False)
    pipe = Pipeline(cfg)

    dm = LabeledDataModule(pipe.data)
    teacher_rate = loader_rate(dm, batches, args.warmup)
    print(f"teacher loader: {teacher_rate:.1f} img/s", flush=True)
    fake_stage(pipe)
    dm = pipe.pseudo_label_data(pipe.data.splits.unlabeled, pipe.exp.store.reader(0), FINAL)
    student_rate = loader_rate(dm, batches, args.warmup)
    print(f"student loader: {student_rate:.1f} img/s", flush=True)

    it = iter(dm.train_dataloader())
    preloaded = [next(it) for _ in range(min(step_batches, 4))]
    del it
    repeats = max(1, step_batches // len(preloaded))
    step = step_rate(cfg, dm, args.device, preloaded, repeats)
    print(f"training step: {step:.1f} img/s", flush=True)

    loader = min(teacher_rate, student_rate)
    result = {"loader_headroom": round(loader / step, 3), "loader_img_s": round(loader, 2),
              "teacher_loader_img_s": round(teacher_rate, 2), "student_loader_img_s": round(student_rate, 2),
              "step_img_s": round(step, 2), "batch_size": cfg.dataset.batch_size,
              "num_workers": cfg.dataset.num_workers}
    settings = {"student_model": OmegaConf.to_container(cfg.student), "crop_size": list(cfg.dataset.crop_size),
                "timed_batches": batches, "warmup_batches": args.warmup, "step_batches": repeats * len(preloaded),
                "precision": cfg.trainer.precision}
    bc.report("loader", args, result, settings)


if __name__ == "__main__":
    main()
