"""Memory: does pseudo-labeling's peak memory stay flat as the number of images grows?

Labels N and then 4N images, each in a fresh subprocess running mckd's labeling step (`Pipeline.label`:
Trainer.predict with a Labeler and the PseudoLabelWriter, the stage manifest, and the pseudo-label mIoU read back
from the store) with an untrained teacher network. The parent polls the subprocess and its children (the
DataLoader workers) with psutil and records the peak of their summed RSS (and of their summed PSS, which counts
pages shared between the processes once); the subprocess also reports its own `ru_maxrss`.
`rss_ratio` = peak summed RSS with 4N images / with N (target <= 1.15).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import bench_common as bc


def child(args) -> None:
    """Label `args.child` images, then print this process's and its children's ru_maxrss as JSON."""
    bc.setup(args)
    import lightning as L

    from mckd.layout import TEACHER
    from mckd.models import build_model, model_config
    from mckd.pipeline.orchestrator import Pipeline

    work = tempfile.mkdtemp(prefix="mckd-bench-memory-")
    overrides = [f"experiment_dir={work}", f"dataset.params.num_train={args.child + 8}",
                 "dataset.split.num_labeled=8", f"dataset.params.height={args.size[0]}",
                 f"dataset.params.width={args.size[1]}", f"dataset.eval_batch_size={args.batch}", *args.override]
    cfg = bc.compose_config(args.device, overrides)
    L.seed_everything(0, verbose=False)
    pipe = Pipeline(cfg)
    net = build_model(model_config(cfg.teacher, cfg.dataset.crop_size), pipe.data.num_classes)
    samples = pipe.data.splits.unlabeled
    assert len(samples) == args.child, (len(samples), args.child)
    start = time.perf_counter()
    pipe.label(0, [(samples, [TEACHER], [net])], {TEACHER: "labeled"})
    seconds = time.perf_counter() - start
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    print("CHILD " + json.dumps({
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20,
        "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**20,
        "seconds": seconds, "labeled": len(pipe.exp.store.manifest(0)["partitions"][0]["ids"])}),
        flush=True)


def tree_memory(proc) -> tuple[float, float]:
    """Summed RSS and PSS (MiB) of `proc` and its descendants; PSS falls back to RSS where unavailable."""
    import psutil

    rss = pss = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            full = p.memory_full_info()
            rss += full.rss
            pss += getattr(full, "pss", full.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return rss / 2**20, pss / 2**20


def measure(args, images: int) -> dict:
    """Run one labeling subprocess for `images` images and poll its memory until it ends."""
    import psutil

    cmd = [sys.executable, __file__, "--child", str(images), "--device", args.device,
           "--size", *map(str, args.size), "--batch", str(args.batch),
           *(f"--override={o}" for o in args.override)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    ps = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0.0
    while proc.poll() is None:
        try:
            rss, pss = tree_memory(ps)
        except psutil.NoSuchProcess:
            break
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(args.interval)
    out = proc.stdout.read()
    proc.wait()
    lines = [line for line in out.splitlines() if line.startswith("CHILD ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"labeling subprocess failed ({proc.returncode}):\n{out[-4000:]}")
    info = json.loads(lines[-1][len("CHILD "):])
    if info["labeled"] != images:
        sys.exit(f"labeling subprocess wrote {info['labeled']} labels, expected {images}")
    return {"images": images, "peak_rss_mb": round(peak_rss, 1), "peak_pss_mb": round(peak_pss, 1),
            **{k: round(v, 1) for k, v in info.items() if k != "labeled"}}


def main() -> None:
    p = bc.parser("memory", __doc__)
    p.add_argument("--images", type=int, help="N (default: 4 quick; full: 32 cpu, 64 cuda); the second run labels 4N")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="image size (default: 64 64 quick; full: "
                   "192 384 cpu, 256 512 cuda)")
    p.add_argument("--batch", type=int, default=8, help="eval batch size (default 8)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between memory polls")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)  # internal: the labeling subprocess
    args = p.parse_args()
    cuda = args.device == "cuda"
    args.size = args.size or ([64, 64] if args.quick else [256, 512] if cuda else [192, 384])
    if args.child:
        child(args)
        return
    n = args.images or (4 if args.quick else 64 if cuda else 32)
    small = measure(args, n)
    print(f"N={n}: {small}", flush=True)
    large = measure(args, 4 * n)
    print(f"4N={4 * n}: {large}", flush=True)
    result = {"rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 4),
              "pss_ratio": round(large["peak_pss_mb"] / small["peak_pss_mb"], 4),
              "self_maxrss_ratio": round(large["maxrss_mb"] / small["maxrss_mb"], 4),
              "peak_rss_mb_n": small["peak_rss_mb"], "peak_rss_mb_4n": large["peak_rss_mb"], "n": n}
    bc.report("memory", args, result, {"image_size": args.size, "eval_batch_size": args.batch,
                                       "poll_interval_s": args.interval, "n": small, "4n": large})


if __name__ == "__main__":
    main()
