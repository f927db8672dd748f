"""Shared by scripts/bench_*.py: arguments, the composed config, timing helpers, the RESULT line and JSON.

Every benchmark takes `--quick` (a small run for tests, well under a minute on 2 CPU cores), `--device cpu|cuda`
and `--json PATH`, and ends by printing one line `RESULT key=value ...` and writing the same figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"bench_{name}.py", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small run (tests): well under a minute on 2 CPU cores")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models run (default cpu)")
    p.add_argument("--json", default=str(RESULTS_DIR / f"{name}.json"), help="where to write the figures")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a Hydra override of mckd's config, e.g. dataset.crop_size=[256,256] (repeatable)")
    return p


def setup(args: argparse.Namespace) -> None:
    """Quiet libraries and check the device; call before anything imports torch, so that the process is set up as
    mckd's commands set theirs up (mckd.cli sets OMP_WAIT_POLICY before torch loads)."""
    from mckd.cli import quiet_libraries  # first: before torch

    quiet_libraries()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device available")


def compose_config(device: str, overrides: Sequence[str] = ()):
    """mckd's `train` config (mckd/conf) as `mckd-train` would compose it, on `device`'s trainer config."""
    from hydra import compose, initialize_config_dir

    from mckd.cli import __file__ as cli_file

    conf_dir = str(Path(cli_file).parent / "conf")
    trainer = "gpu" if device == "cuda" else "cpu"
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        return compose(config_name="train", overrides=[f"trainer={trainer}", *overrides])


def autocast(cfg, device: str):
    """The autocast context matching the trainer config's precision, for the hand-written loops."""
    import contextlib

    import torch

    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision.startswith("bf16"):
        return torch.autocast(device, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device, dtype=torch.float16)
    return contextlib.nullcontext()


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def now(device: str) -> float:
    """A timestamp after the device has finished all queued work."""
    sync(device)
    return time.perf_counter()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def machine(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def report(name: str, args: argparse.Namespace, result: Mapping, settings: Mapping | None = None) -> None:
    """Print `RESULT key=value ...` and write {"result": ..., "settings": ..., "machine": ...} to --json."""
    print("RESULT " + " ".join(f"{k}={_fmt(v)}" for k, v in result.items()), flush=True)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "mode": "quick" if args.quick else "full", "result": dict(result),
            "settings": dict(settings or {}), "overrides": list(getattr(args, "override", [])),
            "machine": machine(args.device),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    path.write_text(json.dumps(data, indent=2) + "\n")


def plain_train_step(net, opt, images, masks, cfg, device: str) -> None:
    """One hand-written PyTorch training step: the baseline that mckd's training path is compared with."""
    import torch.nn.functional as F

    from mckd.data.source import IGNORE_INDEX

    with autocast(cfg, device):
        logits = net(images)
    loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
