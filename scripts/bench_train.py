"""Training overhead: mckd's training path vs. a hand-written PyTorch loop on the same model, data and steps.

mckd: `Trainer.fit` on a SegmentationModule (the teacher's model and loss) with the LabeledDataModule's
loader, the Trainer built by `Pipeline.trainer` (mckd's CSV logging, logging interval and progress-bar
choice), with validation switched off. Plain: the same network from `build_model`, the same DataLoader, AdamW
and cross-entropy. Rounds alternate plain, mckd, plain, mckd, ...; each round runs `warmup` steps and then times
`steps` steps (from the end of the last warm-up step to the end of the last step). The figures are the median
img/s over the rounds, and `throughput_ratio` = mckd / plain (target >= 0.95).
"""

from __future__ import annotations

import gc
import tempfile
import time

import bench_common as bc


def run_mckd(cfg, device: str, warmup: int, steps: int, seed: int) -> float:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    from mckd.data import LabeledDataModule
    from mckd.layout import TEACHER
    from mckd.modules import SegmentationModule
    from mckd.pipeline.orchestrator import Pipeline

    class StepTimes(Callback):
        def __init__(self):
            self.start = self.end = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == warmup - 1:
                self.start = bc.now(device)
            elif batch_idx == warmup + steps - 1:
                self.end = bc.now(device)

    L.seed_everything(seed, verbose=False)
    pipe = Pipeline(cfg)
    dm = LabeledDataModule(pipe.data)
    module = pipe.module(SegmentationModule, cfg.teacher, TEACHER, cfg.loss)
    timer = StepTimes()
    trainer = pipe.trainer("bench-train", max_epochs=1, callbacks=[timer])
    trainer.fit(module, datamodule=dm)
    images = steps * cfg.dataset.batch_size
    del trainer, module, dm, pipe
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return images / (timer.end - timer.start)


def run_plain(cfg, device: str, warmup: int, steps: int, seed: int) -> float:
    import lightning as L
    import torch

    from mckd.data import LabeledDataModule, SegmentationData
    from mckd.models import build_model, model_config

    L.seed_everything(seed, verbose=False)
    dm = LabeledDataModule(SegmentationData.build(cfg.dataset))
    loader = dm.train_dataloader()
    net = build_model(model_config(cfg.teacher, cfg.dataset.crop_size), dm.num_classes).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if device == "cuda":
        torch.backends.cudnn.benchmark = bool(cfg.trainer.get("benchmark", False))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    net.train()
    start = end = None
    for i, batch in enumerate(loader):
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        bc.plain_train_step(net, opt, images, masks, cfg, device)
        if i == warmup - 1:
            start = bc.now(device)
        elif i == warmup + steps - 1:
            end = bc.now(device)
            break
    del loader, net, opt, dm
    gc.collect()
    return steps * cfg.dataset.batch_size / (end - start)


def main() -> None:
    p = bc.parser("train", __doc__)
    p.add_argument("--rounds", type=int, help="plain+mckd pairs (default: 1 quick; full: 3 cpu, 5 cuda)")
    p.add_argument("--warmup", type=int, help="untimed steps per round (default: 1 quick; full: 2 cpu, 5 cuda)")
    p.add_argument("--steps", type=int, help="timed steps per round (default: 2 quick; full: 8 cpu, 50 cuda)")
    args = p.parse_args()
    bc.setup(args)
    cuda = args.device == "cuda"
    rounds = args.rounds or (1 if args.quick else 5 if cuda else 3)
    warmup = args.warmup or (1 if args.quick else 5 if cuda else 2)
    steps = args.steps or (2 if args.quick else 50 if cuda else 8)

    from omegaconf import OmegaConf

    work = tempfile.mkdtemp(prefix="mckd-bench-train-")
    batch = 8 if args.quick else 16
    total = warmup + steps
    # one epoch holds every step of a round: enough labeled images, validation off
    overrides = [f"experiment_dir={work}", f"dataset.batch_size={batch}",
                 f"dataset.params.num_train={max(400, total * batch + 40)}",
                 f"dataset.split.num_labeled={total * batch}",
                 f"+trainer.max_steps={total}", "+trainer.limit_val_batches=0", "+trainer.enable_checkpointing=false"]
    if args.quick:
        overrides.append("dataset.crop_size=[64,64]")
    cfg = bc.compose_config(args.device, [*overrides, *args.override])
    mckd, plain = [], []
    for r in range(rounds):
        t = time.perf_counter()
        plain.append(run_plain(cfg, args.device, warmup, steps, seed=r))
        mckd.append(run_mckd(cfg, args.device, warmup, steps, seed=r))
        print(f"round {r + 1}/{rounds}: plain {plain[-1]:.1f} img/s, mckd {mckd[-1]:.1f} img/s "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    m, pl = bc.median(mckd), bc.median(plain)
    result = {"throughput_ratio": round(m / pl, 4), "mckd_img_s": round(m, 2), "plain_img_s": round(pl, 2),
              "rounds": rounds, "steps": steps, "batch_size": batch}
    settings = {"model": OmegaConf.to_container(cfg.teacher), "crop_size": list(cfg.dataset.crop_size),
                "warmup": warmup, "num_workers": cfg.dataset.num_workers, "precision": cfg.trainer.precision,
                "mckd_img_s_rounds": [round(v, 2) for v in mckd], "plain_img_s_rounds": [round(v, 2) for v in plain]}
    bc.report("train", args, result, settings)


if __name__ == "__main__":
    main()
