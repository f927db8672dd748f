"""Console entry points (Hydra mains); configs ship inside the package in mckd/conf."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import hydra
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import DictConfig

import mckd.conf  # noqa: F401 (stores the config schema, mckd/schema.py, also for initialize_config_dir users)
from mckd.errors import MckdError, debugging, exit_on_user_error
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


# old spellings on the command line, accepted with a warning until the next release: pattern -> new spelling.
# `student` is the students' model node, and `stage=first` ran every student-pair stage, not the first.
DEPRECATED_SPELLINGS = {r"^student=([a-z])$": r"member=\1", r"^stage=first$": "stage=pairs"}
DEPRECATED_ARGS: list[str] = []


def rename_deprecated(argv: list[str]) -> list[str]:
    """`argv` with the old spellings (DEPRECATED_SPELLINGS) renamed; each rename is remembered, to be warned of
    once logging is set up."""
    rewritten = list(argv)
    for pattern, new in DEPRECATED_SPELLINGS.items():
        rewritten = [re.sub(pattern, new, arg) for arg in rewritten]
    DEPRECATED_ARGS.extend(f"{old} (use {new})" for old, new in zip(argv, rewritten) if old != new)
    return rewritten


class ConfigCompositionError(MckdError, ValueError):
    """A config that does not compose: a wrong type, an undeclared key or an unknown value (mckd/schema.py), or a
    config group option that does not exist."""


def hydra_message(err: Exception) -> str:
    """Hydra's message and its cause's on one line, without the class names OmegaConf adds and the search path."""
    text = "\n".join(str(part) for part in (err, err.__cause__) if part is not None).split("Config search path:")[0]
    lines = [line.strip().rstrip(".") for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("object_type=", "reference_type="))]
    return "".join(line + (" " if line.endswith(":") else "; ") for line in lines).rstrip("; ")


@contextmanager
def config_errors_in_one_line() -> Iterator[None]:
    """A command line that does not compose stops with Hydra's message on one line and exit status 2, as every
    other bad input does (mckd/errors.py); HYDRA_FULL_ERROR=1 or MCKD_DEBUG=1 show Hydra's own report. Hydra is
    asked to raise instead of printing (HYDRA_FULL_ERROR, inherited by the processes the command starts), so an
    error that is not the user's shows Python's whole traceback, Hydra's frames included."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" or debugging():
        yield
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises the error instead of printing it and exiting 1
    try:
        yield
    except (ConfigCompositionException, OverrideParseException) as err:
        with exit_on_user_error(logging_ready=False):
            raise ConfigCompositionError(hydra_message(err)) from None
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


def train() -> None:
    sys.argv[1:] = rename_deprecated(sys.argv[1:])
    with config_errors_in_one_line():
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
    with config_errors_in_one_line():
        evaluate_main()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def evaluate_main(cfg: DictConfig) -> float | None:
    """mckd-eval: mIoU, per-class IoU and pixel accuracy of a checkpoint on a split (mckd/evaluate.py)."""
    from mckd.evaluate import evaluate as run

    return run_command(run, cfg)["miou"]


def predict() -> None:
    with config_errors_in_one_line():
        predict_main()


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def predict_main(cfg: DictConfig) -> None:
    """mckd-predict: a checkpoint on a folder of images: masks, colour masks, overlays (mckd/predict.py)."""
    from mckd.predict import predict as run

    run_command(run, cfg)


if __name__ == "__main__":
    train()
