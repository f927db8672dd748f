"""Console entry points (Hydra mains); configs ship inside the package in mckd/conf."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

import hydra
from omegaconf import DictConfig

from mckd.errors import exit_on_user_error
from mckd.layout import FINAL

# OpenMP threads that wait passively instead of spinning: on a CPU that is busy with other work (the DataLoader
# workers on a small machine, other jobs), spinning threads slowed CPU training and labeling 12-18 times
# (docs/benchmarks.md). Read when torch loads, so set here, before any torch import; OMP_WAIT_POLICY=ACTIVE undoes it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

log = logging.getLogger("mckd")
# UserWarnings that mckd's own use of its libraries triggers and that need nothing from the user (regexes matched
# at the start of the message); every other warning is shown
HARMLESS_WARNINGS = (
    r"The number of training batches \(\d+\) is smaller than the logging interval",  # short (debug) epochs
    r"The '\w+_dataloader' does not have many workers",  # dataset.num_workers is the user's (docs/benchmarks.md)
    r"Checkpoint directory .* exists and is not empty",  # a resumed step saves into its own checkpoint folder
)


def quiet_libraries() -> None:
    """Keep Lightning's per-call chatter and known-harmless warnings out of the user's log."""
    for message in HARMLESS_WARNINGS:  # only these: others, e.g. Lightning's SLURM warnings, stay visible
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed", "lightning.pytorch.callbacks.model_summary"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_pipeline(cfg: DictConfig) -> dict | None:
    from mckd.pipeline.validate import validate

    for arg in DEPRECATED_ARGS:
        log.warning("%s is deprecated and will be removed in the next release", arg)
    validate(cfg)  # before Lightning loads: bad input fails in a second, and before the seed (model builds draw)
    if cfg.get("launcher", {}).get("name", "none") != "none":  # submit (or run) the experiment as jobs
        from hydra.core.hydra_config import HydraConfig

        from mckd.pipeline.jobs import launch

        return launch(cfg, list(HydraConfig.get().overrides.task))
    import lightning as L

    from mckd.pipeline.orchestrator import Pipeline

    quiet_libraries()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return Pipeline(cfg, validated=True).run()


def member_alias(argv: list[str]) -> list[str]:
    """`student=a` (one pair member), deprecated, means `member=a`: the `student` node itself is the student's
    model. Each rewrite is remembered, to be warned of once logging is set up."""
    rewritten = [re.sub(r"^student=([a-z])$", r"member=\1", arg) for arg in argv]
    DEPRECATED_ARGS.extend(f"{old} (use {new})" for old, new in zip(argv, rewritten) if old != new)
    return rewritten


DEPRECATED_ARGS: list[str] = []


def train() -> None:
    sys.argv[1:] = member_alias(sys.argv[1:])
    train_main()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """mckd-train: the whole MCKD pipeline, or the step named by `stage=`."""
    with exit_on_user_error(cfg.experiment_dir):
        results = run_pipeline(cfg)
    final = (results or {}).get(FINAL) or {}
    return final.get("val_miou")


def run_command(command, cfg: DictConfig) -> dict:
    """Run an mckd command's logic on its config and command-line overrides; user errors exit 2 without a traceback."""
    from hydra.core.hydra_config import HydraConfig

    quiet_libraries()
    with exit_on_user_error(prefix="error: "):  # their log lines are bare messages
        return command(cfg, list(HydraConfig.get().overrides.task))


def evaluate() -> None:
    from mckd.checkpoints import dataset_key_overrides

    sys.argv[1:] = dataset_key_overrides(sys.argv[1:])
    evaluate_main()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def evaluate_main(cfg: DictConfig) -> float | None:
    """mckd-eval: mIoU, per-class IoU and pixel accuracy of a checkpoint on a split (mckd/evaluate.py)."""
    from mckd.evaluate import evaluate as run

    return run_command(run, cfg)["miou"]


def predict() -> None:
    from mckd.checkpoints import dataset_key_overrides

    sys.argv[1:] = dataset_key_overrides(sys.argv[1:])
    predict_main()


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def predict_main(cfg: DictConfig) -> None:
    """mckd-predict: a checkpoint on a folder of images: masks, colour masks, overlays (mckd/predict.py)."""
    from mckd.predict import predict as run

    run_command(run, cfg)


if __name__ == "__main__":
    train()
