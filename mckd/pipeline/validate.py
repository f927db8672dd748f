"""Everything about mckd-train's input that can be known before the teacher trains, checked before it trains.

Each problem is one MckdError naming the key or file and what was expected. The checks come in two parts:
`check_settings` needs neither data nor torch (config values, a writable experiment directory, the stored
identity) and also runs as a Hydra callback before Hydra writes into the experiment directory;
`check_inputs` reads the dataset's files (image headers, the masks training reads), builds both models
on the CPU and loads `teacher_checkpoint`.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from mckd.data.registry import build_source
from mckd.data.source import DatasetError
from mckd.data.splits import build_splits
from mckd.errors import MckdError, exit_on_user_error
from mckd.pipeline.identity import (
    DEPRECATED_TEACHER_CHECKPOINT,
    TEACHER_CHECKPOINT,
    check_identity,
    teacher_checkpoint,
)
from mckd.pipeline.partition import stage_partitions
from mckd.schema import Rule, TrainConfig, checks, is_int

log = logging.getLogger("mckd")

_ABSENT = object()


class ConfigError(MckdError, ValueError):
    """A config value the pipeline cannot use."""


# -- config values ---------------------------------------------------------------------------------------------
# key -> the range its value must be in, from the schema (mckd/schema.py: each field's `check`, an Enum's members).
# A config Hydra composed has had its types, keys and choices checked already; one made without the schema
# (OmegaConf.create, then Pipeline(cfg)) gets its choices checked here, and its absent keys are left to the code's
# defaults.
RULES: dict[str, Rule] = checks(TrainConfig)


def value(cfg: DictConfig, key: str) -> Any:
    """A config value as plain Python (lists and dicts, resolved); _ABSENT when the key is not there."""
    node = OmegaConf.select(cfg, key, default=_ABSENT)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def require_valid(key: str, found: Any, rule: Rule) -> None:
    if not rule.ok(found):
        raise ConfigError(f"{key}={found!r}: expected {rule.expected}")


def check_unset(cfg: DictConfig) -> None:
    """Mandatory keys left as `???` (e.g. the folder dataset's root)."""
    for top in cfg:
        if top == "hydra":  # Hydra's own node: it has keys that are only set later (hydra.job.num)
            continue
        node = OmegaConf.select(cfg, str(top), throw_on_resolution_failure=False)
        missing = (OmegaConf.missing_keys(node) if OmegaConf.is_config(node)  # full keys (dataset.params.root)
                   else {str(top)} if OmegaConf.is_missing(cfg, str(top)) else set())
        for key in sorted(missing):
            raise ConfigError(f"{key} is not set: pass {key}=VALUE")


def check_values(cfg: DictConfig) -> None:
    """The range of every key, then the rules that tie keys together."""
    check_unset(cfg)
    for key, rule in RULES.items():
        if (found := value(cfg, key)) is not _ABSENT:
            require_valid(key, found, rule)
    check_stages(cfg)
    check_reliable_fraction(cfg)
    check_partition_group(cfg.get("partition_group"))
    if value(cfg, "warm_start") is True and value(cfg, "repartition") is True and cfg.num_stages > 2:
        raise ConfigError("warm_start=true with repartition=true: a warm-started student would label images its "
                          "starting weights trained on (the partitions change every stage); set one of them false")
    if value(cfg, "student_loss.soft_weight") and not value(cfg, "pseudo.soft_topk"):
        raise ConfigError(f"student_loss.soft_weight={value(cfg, 'student_loss.soft_weight')}: needs soft labels, "
                          "which are stored only with pseudo.soft_topk > 0")


def member_letters(num_partitions: int) -> list[str]:
    return [chr(ord("a") + i) for i in range(num_partitions)]


def check_stages(cfg: DictConfig) -> None:
    stages, partitions = cfg.num_stages, cfg.num_partitions
    if stages > 1 and partitions < 2:
        raise ConfigError(f"num_partitions={partitions}: cross-labeling needs at least 2 (num_stages={stages})")
    pair_stage = cfg.get("pair_stage")
    if pair_stage is not None and not 1 <= pair_stage <= stages - 1:
        expected = f"1..{stages - 1}" if stages > 1 else "null (num_stages=1 has no pair stages)"
        raise ConfigError(f"pair_stage={pair_stage}: expected {expected} (num_stages={stages})")
    member = cfg.get("member")
    if member is not None and str(member) not in member_letters(partitions):
        raise ConfigError(f"member={member!r}: expected one of {', '.join(member_letters(partitions))} "
                          f"(num_partitions={partitions})")


def check_reliable_fraction(cfg: DictConfig) -> None:
    """pseudo.reliable_fraction scores with checkpoints the teacher saves after 1/3 and 2/3 of its training."""
    fraction = value(cfg, "pseudo.reliable_fraction")
    if fraction in (None, _ABSENT):
        return
    key, checkpoint = teacher_checkpoint(cfg)
    if checkpoint:
        raise ConfigError(f"pseudo.reliable_fraction={fraction}: needs the teacher trained here (it scores with the "
                          f"teacher's checkpoints after 1/3 and 2/3 of its epochs), but {key} loads one: unset one")
    epochs = value(cfg, "train.teacher_epochs")
    if is_int(epochs) and epochs < 3:
        raise ConfigError(f"pseudo.reliable_fraction={fraction}: needs train.teacher_epochs >= 3 (checkpoints after "
                          f"1/3 and 2/3 of the teacher's epochs), not {epochs}")


def check_partition_group(pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"partition_group={pattern!r}: not a regular expression ({err})") from None


def check_writable(directory: str | Path, key: str = "experiment_dir") -> None:
    """The experiment directory exists (or can be made) and takes new files."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".mckd-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"{key}={directory}: cannot write there ({err.strerror or err}): expected a writable "
                          "directory (hydra.run.dir=DIR or experiment_dir=DIR)") from None


def check_teacher_checkpoint_exists(cfg: DictConfig) -> None:
    new, old = OmegaConf.select(cfg, TEACHER_CHECKPOINT), OmegaConf.select(cfg, DEPRECATED_TEACHER_CHECKPOINT)
    if new and old and new != old:
        raise ConfigError(f"{TEACHER_CHECKPOINT}={new} and {DEPRECATED_TEACHER_CHECKPOINT}={old} differ: set "
                          f"{TEACHER_CHECKPOINT} only ({DEPRECATED_TEACHER_CHECKPOINT} is its deprecated old name)")
    key, path = teacher_checkpoint(cfg)
    if path and not Path(path).expanduser().is_file():
        raise ConfigError(f"{key}={path}: file not found (expected a .ckpt written by mckd-train)")


def check_settings(cfg: DictConfig, directory: str | Path, warn: bool = True) -> None:
    """What needs neither the data nor torch: config values, the experiment directory and its identity."""
    check_writable(directory)  # first: the errors that follow are also logged there (cli.log)
    check_values(cfg)
    check_teacher_checkpoint_exists(cfg)
    check_identity(cfg, directory, warn)


# -- the dataset -----------------------------------------------------------------------------------------------
def image_size(path: str, what: str) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding it."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise DatasetError(f"{what} file not found: {path}") from None
    except OSError as err:
        raise DatasetError(f"cannot open {what} {path}: {err} (expected an image file)") from None


def check_sample_files(source, sample, read_mask: bool) -> None:
    """The image opens; its mask, if any, opens, has the image's size and, where training reads it, valid values."""
    size = image_size(sample.image, "image")
    if sample.mask is None:
        return
    mask_size = image_size(sample.mask, "mask")
    if mask_size != size:
        raise DatasetError(f"mask {sample.mask}: size {mask_size[::-1]} differs from its image {sample.image} "
                           f"{size[::-1]}")
    if read_mask:
        source.read_mask(sample)  # the reader owns which values are valid


def check_files(source, samples: Iterable, read_masks: bool) -> int:
    """`check_sample_files` on every sample (threads: most of the time is spent waiting on the disk)."""
    samples = list(samples)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for _ in pool.map(lambda s: check_sample_files(source, s, read_masks), samples):
            pass
    return len(samples)


def check_ground_truth(splits) -> None:
    for name in ("labeled", "val", "test"):
        for sample in getattr(splits, name):
            if sample.mask is None:
                raise DatasetError(f"{name} image {sample.image} has no mask: the {name} split needs ground truth")
    for name in ("labeled", "val"):
        if not getattr(splits, name):
            raise DatasetError(f"the {name} split is empty: expected at least one image (dataset.split, dataset.params)")


def check_unlabeled(cfg: DictConfig, splits) -> None:
    """Students need unlabeled images, and a pair stage needs at least one (group of) image(s) per partition."""
    if not splits.unlabeled:
        if cfg.stage != "teacher":
            raise ConfigError("the unlabeled split is empty: students need unlabeled images "
                              "(dataset.split: fewer labeled images, or an unlabeled_list)")
        return
    if cfg.num_stages > 1:
        stage_partitions(splits.unlabeled, cfg.num_partitions, cfg.seed, 1, cfg.repartition, cfg.get("partition_group"))


def check_dataset(cfg: DictConfig) -> int:
    """The splits can be built, every file opens, and the unlabeled split can be partitioned; the class count."""
    source = build_source(cfg.dataset)
    splits = build_splits(source, cfg.dataset.get("split", {}))
    check_ground_truth(splits)
    check_unlabeled(cfg, splits)
    if source.reads_files:
        start = time.perf_counter()
        # masks training reads (labeled, val, test) are decoded; the others only opened
        checked = check_files(source, [*splits.labeled, *splits.val, *splits.test], read_masks=True)
        checked += check_files(source, splits.unlabeled, read_masks=False)
        log.info("checked the files of %d images in %.1f s", checked, time.perf_counter() - start)
    return source.num_classes


# -- models and the teacher checkpoint -------------------------------------------------------------------------
def check_models(cfg: DictConfig, num_classes: int) -> None:
    """Build the student (and the teacher, unless it is loaded) on the CPU once."""
    # torch and Lightning load here, once the checks that need neither have passed
    from mckd.models import ModelConfigError, build_model, model_config

    nodes = ["student"] if teacher_checkpoint(cfg)[1] else ["teacher", "student"]
    for node in nodes:
        try:
            build_model(model_config(cfg[node], cfg.dataset.crop_size), num_classes)
        except ModelConfigError as err:
            raise err.under(node) from None


def check_teacher_checkpoint(key: str, path: str, dataset: str, num_classes: int) -> None:
    """`teacher_checkpoint` loads (mckd.checkpoints owns what a checkpoint is) and predicts the dataset's classes."""
    from mckd.checkpoints import CheckpointError, require_same_classes
    from mckd.modules import SegmentationModule

    try:
        module = SegmentationModule.from_checkpoint(str(Path(path).expanduser()))
    except CheckpointError as err:
        raise ConfigError(f"{key}={path}: {err}") from None
    require_same_classes(path, module.hparams.num_classes, dataset, num_classes)


def check_inputs(cfg: DictConfig) -> None:
    """The dataset's files, both models and the teacher checkpoint."""
    num_classes = check_dataset(cfg)
    check_models(cfg, num_classes)
    key, checkpoint = teacher_checkpoint(cfg)
    if checkpoint:
        check_teacher_checkpoint(key, checkpoint, cfg.dataset.name, num_classes)


def warn_deprecated_keys(cfg: DictConfig) -> None:
    """Warn of `teacher.checkpoint`, the old spelling of `teacher_checkpoint` (read through
    identity.teacher_checkpoint). Old spellings of values on the command line are renamed by mckd/cli.py."""
    if teacher_checkpoint(cfg)[0] == DEPRECATED_TEACHER_CHECKPOINT:
        log.warning("%s is deprecated and will be removed in the next release: use %s", DEPRECATED_TEACHER_CHECKPOINT,
                    TEACHER_CHECKPOINT)


def validate(cfg: DictConfig) -> None:
    """Every check, in the order that fails fastest; raises the first problem found. A deprecated key is warned of
    first, so that every entry point (the CLI, `Pipeline(cfg)`) runs the same steps."""
    warn_deprecated_keys(cfg)
    check_settings(cfg, cfg.experiment_dir)
    check_inputs(cfg)


# -- before Hydra writes ---------------------------------------------------------------------------------------
def planned_experiment_dir(config: DictConfig) -> Path:
    """The experiment directory of a run about to start (Hydra has not set its runtime output dir yet)."""
    raw = OmegaConf.to_container(config, resolve=False).get("experiment_dir")
    if raw is None or "hydra:runtime.output_dir" in str(raw):
        return Path(str(config.hydra.run.dir)).absolute()
    return Path(str(config.experiment_dir)).absolute()


class EarlyChecks(Callback):
    """`check_settings` before Hydra writes `.hydra/` and the job log into the experiment directory, so that a run
    stopped by a bad value, a read-only directory or an identity mismatch leaves an existing experiment as it was."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            directory = planned_experiment_dir(config)
        except Exception as err:  # an experiment_dir this cannot foresee: the task's own validation will check it
            log.debug("early checks skipped: %s", err)
            return
        with exit_on_user_error(directory, logging_ready=False):
            check_settings(config, directory, warn=False)  # the run's own validation warns, once
