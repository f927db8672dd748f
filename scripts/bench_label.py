"""Pseudo-labeling: mckd's predict-and-write path vs. a plain inference loop on the same loader.

mckd: `Trainer.predict` (the Trainer built by `Pipeline.trainer`, as `Pipeline.label` builds it) with a `Labeler`
over the teacher's network and a `PseudoLabelWriter` into a temporary PseudoLabelStore: labels, confidences
(and top-k soft labels) at the original size, PNG-encoded and written on background threads. Plain: the same
network and the same predict DataLoader, a loop that only computes the label (softmax, with the same flip
test-time augmentation as `pseudo.flip`, and argmax) and keeps nothing. Rounds alternate plain, mckd, ...;
each is timed from the end of its `warmup`-th batch to the end (for mckd: every file written).
`throughput_ratio` = mckd img/s / plain img/s (target >= 0.90); `throughput_ratio_total` also counts
start-up (Trainer, loader workers, first batches).

Storage: `bytes_per_label_*` = bytes the store writes per image (label PNG + confidence PNG [+ soft .npz]),
and `bytes_ratio_*` = that / H*W (a raw uint8 mask), for hard labels and soft labels with top-k = 3. In full
mode the network is first trained for a few steps so its predictions have structure (an untrained network's
near-constant output compresses unrealistically well).
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import bench_common as bc


def run_mckd(pipe, net, samples, device: str, warmup: int, store_dir: Path, soft_topk: int = 0) -> dict:
    from lightning.pytorch.callbacks import Callback

    from mckd.data import PredictDataModule
    from mckd.modules import Labeler
    from mckd.pipeline.labeling import PseudoLabelWriter
    from mckd.pipeline.store import PseudoLabelStore

    class BatchTimes(Callback):
        start, seen = None, 0

        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.seen += len(batch["id"])
            if batch_idx == warmup - 1:
                self.start, self.at_start = bc.now(device), self.seen

    cfg = pipe.cfg
    begin = time.perf_counter()
    store = PseudoLabelStore(store_dir, pipe.data.num_classes)
    writer, timer = PseudoLabelWriter(store, 0), BatchTimes()
    dm = PredictDataModule(pipe.data, samples)
    labeler = Labeler([net], flip=cfg.pseudo.flip, window=cfg.pseudo.window, stride=cfg.pseudo.stride,
                      soft_topk=soft_topk)
    pipe.trainer("bench-label", callbacks=[writer, timer], logger=False).predict(
        labeler, datamodule=dm, return_predictions=False)
    end = bc.now(device)
    written = sum(f.stat().st_size for f in store_dir.rglob("*") if f.is_file())
    return {"img_s": (len(samples) - timer.at_start) / (end - timer.start),
            "img_s_total": len(samples) / (end - begin), "bytes": written}


def run_plain(pipe, net, samples, device: str, warmup: int) -> dict:
    import torch

    from mckd.data import PredictDataModule

    cfg = pipe.cfg
    begin = time.perf_counter()
    loader = PredictDataModule(pipe.data, samples).predict_dataloader()
    net = net.to(device).eval()
    seen = at_start = 0
    start = None
    with torch.inference_mode():
        for i, batch in enumerate(loader):
            images = batch["image"].to(device, non_blocking=True)
            with bc.autocast(cfg, device):
                probs = net(images).float().softmax(1)
                if cfg.pseudo.flip:
                    probs += net(images.flip(-1)).float().softmax(1).flip(-1)
            probs.argmax(1)
            seen += len(images)
            if i == warmup - 1:
                start, at_start = bc.now(device), seen
    end = bc.now(device)
    del loader
    gc.collect()
    return {"img_s": (seen - at_start) / (end - start), "img_s_total": seen / (end - begin)}


def pretrain(pipe, net, device: str, steps: int) -> None:
    """A few plain training steps on the labeled split, so that predictions look like a model's."""
    import torch
    import torch.nn.functional as F

    from mckd.data import IGNORE_INDEX, LabeledDataModule

    dm = LabeledDataModule(pipe.data)
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=pipe.cfg.optim.lr)
    done = 0
    while done < steps:
        for batch in dm.train_dataloader():
            logits = net(batch["image"].to(device))
            loss = F.cross_entropy(logits, batch["mask"].to(device), ignore_index=IGNORE_INDEX)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    net.eval()


def main() -> None:
    p = bc.parser("label", __doc__)
    p.add_argument("--rounds", type=int, help="plain+mckd pairs (default: 1 quick; full: 3 cpu, 5 cuda)")
    p.add_argument("--images", type=int, help="images labeled per round (default: 24 quick; full: 160 cpu, 1024 cuda)")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches per round (default 1)")
    p.add_argument("--pretrain-steps", type=int, help="training steps before labeling (default: 0 quick, 20 full)")
    args = p.parse_args()
    bc.setup(args)
    cuda = args.device == "cuda"
    rounds = args.rounds or (1 if args.quick else 5 if cuda else 3)
    images = args.images or (24 if args.quick else 1024 if cuda else 160)
    pretrain_steps = args.pretrain_steps if args.pretrain_steps is not None else (0 if args.quick else 20)

    import lightning as L
    from omegaconf import OmegaConf

    from mckd.models import build_model, model_config
    from mckd.pipeline.orchestrator import Pipeline

    work = Path(tempfile.mkdtemp(prefix="mckd-bench-label-"))
    overrides = [f"experiment_dir={work / 'exp'}", f"dataset.params.num_train={images + 40}",
                 "dataset.split.num_labeled=40"]
    if args.quick:
        overrides.append("dataset.eval_batch_size=8")
    cfg = bc.compose_config(args.device, [*overrides, *args.override])
    L.seed_everything(0, verbose=False)
    pipe = Pipeline(cfg)
    samples = pipe.data.splits.unlabeled[:images]
    net = build_model(model_config(cfg.teacher, cfg.dataset.crop_size), pipe.data.num_classes)
    if pretrain_steps:
        pretrain(pipe, net, args.device, pretrain_steps)

    mckd, plain = [], []
    for r in range(rounds):
        t = time.perf_counter()
        plain.append(run_plain(pipe, net, samples, args.device, args.warmup))
        mckd.append(run_mckd(pipe, net, samples, args.device, args.warmup, work / f"hard{r}"))
        print(f"round {r + 1}/{rounds}: plain {plain[-1]['img_s']:.1f} img/s, mckd {mckd[-1]['img_s']:.1f} img/s "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    soft = run_mckd(pipe, net, samples, args.device, args.warmup, work / "soft3", soft_topk=3)

    h, w = pipe.data.source.read_image(samples[0]).shape[:2]
    m, pl = bc.median([x["img_s"] for x in mckd]), bc.median([x["img_s"] for x in plain])
    mt, plt = bc.median([x["img_s_total"] for x in mckd]), bc.median([x["img_s_total"] for x in plain])
    hard_bytes = mckd[-1]["bytes"] / len(samples)
    soft_bytes = soft["bytes"] / len(samples)
    result = {"throughput_ratio": round(m / pl, 4), "mckd_img_s": round(m, 2), "plain_img_s": round(pl, 2),
              "throughput_ratio_total": round(mt / plt, 4),
              "bytes_per_label_hard": round(hard_bytes), "bytes_ratio_hard": round(hard_bytes / (h * w), 3),
              "bytes_per_label_soft3": round(soft_bytes), "bytes_ratio_soft3": round(soft_bytes / (h * w), 3),
              "images": len(samples), "rounds": rounds}
    settings = {"model": OmegaConf.to_container(cfg.teacher), "image_size": [h, w], "flip": cfg.pseudo.flip,
                "eval_batch_size": cfg.dataset.eval_batch_size, "num_workers": cfg.dataset.num_workers,
                "precision": cfg.trainer.precision, "pretrain_steps": pretrain_steps, "warmup_batches": args.warmup,
                "mckd_rounds": mckd, "plain_rounds": plain, "soft3": soft}
    bc.report("label", args, result, settings)


if __name__ == "__main__":
    main()
