"""The MCKD pipeline: teacher, K-1 student-pair stages with cross-labeling, and the final student.

Every step is skipped when its record (or, for labeling, its manifest) shows it finished, and an
interrupted training resumes from its last checkpoint, so re-running an experiment is always safe.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from omegaconf import DictConfig

from mckd.checkpoints import require_same_classes
from mckd.data.datamodule import (
    LabeledDataModule,
    PredictDataModule,
    PseudoLabelDataModule,
    SegmentationData,
    SegmentationDataModule,
)
from mckd.data.source import Sample
from mckd.errors import MckdError
from mckd.layout import (
    BEST,
    FINAL,
    LAST,
    TEACHER,
    label_step,
    last_checkpoint,
    lightning_dir,
    member_of,
    snapshot_checkpoint,
    student_names,
)
from mckd.models import model_config
from mckd.modules import Labeler, SegmentationModule, StudentModule
from mckd.modules.inference import share_matching_offsets
from mckd.modules.segmentation import mean_iou
from mckd.pipeline.experiment import Experiment, MissingStepError, barrier, gather, is_rank_zero
from mckd.pipeline.identity import record_identity, teacher_checkpoint
from mckd.pipeline.labeling import PseudoLabelWriter, pseudo_label_iou
from mckd.pipeline.lightning_io import AtomicCheckpointIO, ResumingCSVLogger, cluster_plugins
from mckd.pipeline.lock import StepLockedError, one_writer
from mckd.pipeline.partition import stage_partitions
from mckd.pipeline.pictures import write_pictures
from mckd.pipeline.reliability import SnapshotCheckpoint, least_stable, reliable_only, snapshot_epochs
from mckd.pipeline.results import write_results
from mckd.pipeline.store import UNRELIABLE, StageReader
from mckd.pipeline.validate import validate
from mckd.progress import progress, show_progress
from mckd.records import LabelRecord, ModelRecord
from mckd.schema import plain
from mckd.seeding import step_seed
from mckd.visualize import class_counts

log = logging.getLogger("mckd")


def unfinished_batches(samples: list[Sample], todo: set[str], batch_size: int) -> list[Sample]:
    """The whole batches, as an uninterrupted run forms them, that hold a sample in `todo`.

    A resumed labeling predicts these again rather than only the missing samples: an image's probabilities can
    depend on which images share its batch (padding to the largest, the last bits of batched kernels), so
    the labels of a resumed run equal those of one that was never interrupted."""
    batches = [samples[i: i + batch_size] for i in range(0, len(samples), batch_size)]
    return [s for batch in batches if any(s.id in todo for s in batch) for s in batch]


class Pipeline:
    """Runs the steps that `cfg.stage` asks for in one experiment directory."""

    def __init__(self, cfg: DictConfig, validated: bool = False):
        if not validated:  # the CLI validates before it imports Lightning and torch, so bad input fails in a second
            validate(cfg)
        self.cfg = cfg
        self.data = SegmentationData.build(cfg.dataset)  # the reader and splits, shared by every step's DataModule
        self.exp = Experiment(cfg.experiment_dir, self.data.num_classes)
        if is_rank_zero():
            record_identity(cfg, self.exp.dir)
        self.loggers: Callable[[str], list] = lambda step: []
        self.callbacks: Callable[[str], list] = lambda step: []  # extra Lightning callbacks per step name
        self.on_results: list[Callable[[dict], None]] = [lambda results: write_pictures(cfg, self.exp, self.data)]
        if (cfg.get("logger") or {}).get("wandb"):
            from mckd.pipeline.wandb_logging import WandbTracker

            tracker = WandbTracker(cfg, self.exp, self.data)
            self.loggers, self.callbacks = tracker.loggers, tracker.callbacks
            self.on_results.append(tracker.finish)

    # -- building blocks -------------------------------------------------------------------------
    def trainer(self, step: str, max_epochs: int = 1, callbacks: Sequence = (), logger: bool = True) -> L.Trainer:
        kwargs = plain(self.cfg.trainer)
        loggers = [ResumingCSVLogger(self.exp.dir / "logs", name=step, version=0), *self.loggers(step)] if logger else False
        # each step its own root: a SLURM requeue's hpc_ckpt_* of one step is never loaded into another
        return L.Trainer(max_epochs=max_epochs, default_root_dir=lightning_dir(self.exp.dir, step), logger=loggers,
                         callbacks=[*callbacks, *self.callbacks(step)], enable_progress_bar=show_progress(),
                         enable_model_summary=False, plugins=[AtomicCheckpointIO(), *cluster_plugins()], **kwargs)

    def module(self, cls: type[SegmentationModule], model: DictConfig, name: str, loss: DictConfig,
               **extra) -> SegmentationModule:
        return cls(model=model_config(model, self.cfg.dataset.crop_size), num_classes=self.data.num_classes,
                   class_names=self.data.class_names, optim=plain(self.cfg.optim), loss=plain(loss),
                   inference=plain(self.cfg.eval), name=name, channels_last=self.cfg.channels_last, **extra)

    def student(self, name: str, init_from: str | None = None) -> StudentModule:
        module = self.module(StudentModule, self.cfg.student, name, self.cfg.student_loss,
                             cutmix_prob=self.cfg.student_aug.cutmix_prob, seed=self.seed(name))
        if init_from:
            module.net.load_state_dict(StudentModule.from_checkpoint(init_from).net.state_dict())
        return module

    def evaluate(self, trainer: L.Trainer, module: SegmentationModule, checkpoint: str | None,
                 datamodule: SegmentationDataModule) -> dict:
        """val (and test) mIoU and per-class IoU of `checkpoint` (None: the module as it is)."""
        val = trainer.validate(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False,
                               weights_only=True)[0]
        result = {"val_miou": val["val/miou"], "test_miou": None,
                  "per_class_iou": {n: val[f"val/iou/{n}"] for n in self.data.class_names}}
        if self.data.splits.test:
            test = trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False,
                                weights_only=True)[0]
            result["test_miou"] = test["test/miou"]
        return result

    def seed(self, step: str) -> int:
        return step_seed(self.cfg.seed, step)

    def epochs(self, kind: str) -> int:
        """Epochs of the teacher, a pair `student` or the `final` student; students default to the teacher's
        times `train.student_ratio`."""
        train = self.cfg.train
        epochs = train.get(f"{kind}_epochs")
        return int(epochs) if epochs is not None else max(1, round(train.teacher_epochs * train.student_ratio))

    @one_writer(lambda name, *args, **kwargs: name)
    def train(self, name: str, data: Callable[[], SegmentationDataModule], build: Callable[[], SegmentationModule],
              epochs: int, callbacks: Sequence = (), **info) -> ModelRecord:
        """Train the model `build` makes on the DataModule `data` makes, unless the step's record exists; resumes
        from `last.ckpt` when interrupted.

        The step seeds itself (model initialisation, its sampler, CutMix), so its result does not depend on
        which steps ran before it in this process."""
        if (record := self.exp.model_record(name)) is not None:
            log.info("%s: done already (val mIoU %.4f), skipping", name, record.val_miou)
            return record
        L.seed_everything(self.seed(name), verbose=False)
        start = time.time()
        resume = self.exp.resume_checkpoint(name)
        log.info("%s: training for %d epochs%s", name, epochs, f", resuming from {resume}" if resume else "")
        checkpoint = ModelCheckpoint(dirpath=self.exp.checkpoint_dir(name), filename=BEST, monitor="val/miou",
                                     mode="max", enable_version_counter=False)
        # its own callback: since Lightning 2.6 save_last=True writes last.ckpt only when a new best is saved
        latest = ModelCheckpoint(dirpath=self.exp.checkpoint_dir(name), filename=LAST.removesuffix(".ckpt"),
                                 save_on_train_epoch_end=True, enable_version_counter=False)
        datamodule = data()
        module = build()
        ema = self.cfg.train.get("ema_decay")
        averaging = [EMAWeightAveraging(decay=float(ema))] if ema else []
        trainer = self.trainer(name, epochs, [checkpoint, latest, *averaging, *callbacks])
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        last = str(self.exp.last_checkpoint(name))
        best = checkpoint.best_model_path or last
        if averaging:  # the checkpoints hold the average; a trainer without the callback scores them as saved
            trainer = self.trainer(name, epochs)
        # val both selects best.ckpt and scores it; the last epoch's figure shows how much selection adds
        last_val = self.evaluate(trainer, module, last, datamodule) if last != best else None
        scores = self.evaluate(trainer, module, best, datamodule)
        last_val = last_val or scores
        record = ModelRecord(name=name, **scores, checkpoint=os.path.relpath(best, self.exp.dir),
                             wall_time_s=round(time.time() - start, 1), last_val_miou=last_val["val_miou"],
                             last_test_miou=last_val["test_miou"], **info)
        self.exp.save_record(record)
        barrier()  # rank 0 wrote the record; the next step on every rank reads it
        log.info("%s: val mIoU %.4f, last epoch %.4f (%.0f s)", name, record.val_miou, record.last_val_miou,
                 record.wall_time_s)
        return record

    def checkpoint_of(self, step: str) -> str:
        return str(self.exp.dir / self.exp.require_record(step, "labeling").checkpoint)

    def labeled(self, stage: int) -> bool:
        """Whether stage `stage`'s pseudo-labels are complete (manifest) and evaluated (record)."""
        done = self.exp.store.manifest(stage) is not None and self.exp.label_record(stage) is not None
        if done:
            log.info("%s: done already, skipping", label_step(stage))
        return done

    @one_writer(lambda stage, *args: label_step(stage))
    def label(self, stage: int, jobs: list[tuple[list[Sample], list[str], list]], trained_on: dict,
              stability: Sequence = ()) -> None:
        """Write stage `stage`'s pseudo-labels: each job is (samples, labeler names, their networks); from stage 1
        on, blended with the previous stage's labels when `pseudo.previous_weight` > 0. With `stability` (earlier
        checkpoints, then the final one), each image is also scored and the least stable are marked unreliable."""
        name = label_step(stage)
        start = time.time()
        pseudo = self.cfg.pseudo
        previous_weight = float(pseudo.get("previous_weight") or 0.0)
        previous = self.exp.store.reader(stage - 1) if stage > 0 and previous_weight > 0 else None
        writer = PseudoLabelWriter(self.exp.store, stage)
        for samples, names, nets in jobs:
            barrier()
            todo = set(self.exp.store.missing(stage, [s.id for s in samples], stability=bool(stability)))
            if not todo:
                continue
            log.info("%s: %s labels %d images", name, "+".join(names), len(todo))
            datamodule = PredictDataModule(self.data, unfinished_batches(samples, todo, self.data.eval_batch_size))
            labeler = Labeler(nets, flip=pseudo.flip, window=pseudo.window, stride=pseudo.stride,
                              soft_topk=pseudo.soft_topk, scales=pseudo.get("scales") or (1.0,), previous=previous,
                              previous_weight=previous_weight, stability=stability)
            if pseudo.get("match_class_shares"):
                labeler.offsets = self.class_offsets(name, labeler, samples)
            self.trainer(name, callbacks=[writer], logger=False).predict(labeler, datamodule=datamodule,
                                                                         return_predictions=False)
        barrier()
        if is_rank_zero():
            partitions = [{"index": j, "ids": [s.id for s in samples], "labeled_by": names}
                          for j, (samples, names, _) in enumerate(jobs)]
            everything = [s for samples, _, _ in jobs for s in samples]
            manifest = {"partitions": partitions, "trained_on": trained_on}
            if stability:
                manifest.update(self.unreliable(stage, everything))
            self.exp.store.write_manifest(stage, manifest)
            per_class = pseudo_label_iou(self.data.source, everything, self.exp.store.reader(stage))
            miou = None if per_class is None else float(mean_iou(per_class))
            per_class_iou = None if per_class is None else dict(zip(self.data.class_names, per_class.tolist()))
            self.exp.save_record(LabelRecord(name=name, stage=stage, pseudo_label_miou=miou,
                                             pseudo_label_per_class_iou=per_class_iou,
                                             wall_time_s=round(time.time() - start, 1)))
            log.info("%s: pseudo-label mIoU %s", name, "n/a" if miou is None else f"{miou:.4f}")
        barrier()

    def class_offsets(self, name: str, labeler: Labeler, samples: list[Sample]) -> torch.Tensor:
        """pseudo.match_class_shares: per-class offsets that give `labeler`'s labels of `samples` (all of them, so
        that a resumed labeling fits the same ones) the class shares of the labeled ground truth."""
        labeler.sample_pixels = True
        try:
            batches = self.trainer(name, logger=False).predict(labeler, datamodule=PredictDataModule(self.data, samples))
        finally:
            labeler.sample_pixels = False
        pixels = torch.cat([grid for rank in gather([g for batch in batches for g in batch]) for grid in rank])
        offsets = share_matching_offsets(pixels, self.labeled_shares)
        log.info("%s: class offsets %s (pseudo.match_class_shares)", name,
                 ", ".join(f"{c} {b:+.2f}" for c, b in zip(self.data.class_names, offsets.tolist())))
        return offsets

    @functools.cached_property
    def labeled_shares(self) -> torch.Tensor:
        """Pixels per class of the labeled split's ground truth."""
        masks = (self.data.source.read_mask(s) for s in progress(self.data.splits.labeled, desc="class counts"))
        counts = torch.tensor(class_counts(masks, self.data.num_classes), dtype=torch.float64)
        if not counts.sum():
            raise MckdError("pseudo.match_class_shares=true: the labeled split's masks hold no class pixel (all "
                            "ignore), so there are no shares to match; set it to false")
        return counts

    def unreliable(self, stage: int, samples: list[Sample]) -> dict:
        """The manifest's record of pseudo.reliable_fraction: the share kept and the ids left out."""
        fraction = float(self.cfg.pseudo.reliable_fraction)
        left_out = least_stable(self.exp.store.stability(stage, [s.id for s in samples]), fraction)
        log.info("%s: %d of %d images are the least stable, left out of the next students' training "
                 "(pseudo.reliable_fraction=%g)", label_step(stage), len(left_out), len(samples), fraction)
        return {"reliable_fraction": fraction, UNRELIABLE: left_out}

    def teacher_snapshots(self) -> dict[int, Path]:
        """{epochs: file} of the teacher's earlier checkpoints that pseudo.reliable_fraction scores with."""
        if self.cfg.pseudo.get("reliable_fraction") is None:
            return {}
        return {n: snapshot_checkpoint(self.exp.dir, TEACHER, n) for n in snapshot_epochs(self.epochs("teacher"))}

    def teacher_stability(self) -> list:
        """The teacher's earlier checkpoints, then its last epoch's (ST++ scores against the final model, not
        the best one); none without pseudo.reliable_fraction."""
        snapshots = self.teacher_snapshots()
        if not snapshots:
            return []
        paths = [*snapshots.values(), last_checkpoint(self.exp.dir, TEACHER)]
        if missing := [str(p) for p in paths if not p.is_file()]:
            raise MissingStepError(f"pseudo.reliable_fraction needs the teacher's checkpoints {', '.join(missing)}, "
                                   "which its training did not write (it ran without the option): train the "
                                   "teacher again in a new experiment directory")
        return [SegmentationModule.from_checkpoint(str(p)).net for p in paths]

    # -- the method's steps ----------------------------------------------------------------------
    def run_teacher(self) -> None:
        cfg = self.cfg
        if checkpoint := teacher_checkpoint(cfg)[1]:
            self.load_teacher(checkpoint)
        else:
            snapshots = self.teacher_snapshots()
            self.train(TEACHER, lambda: LabeledDataModule(self.data, seed=self.seed(TEACHER)),
                       lambda: self.module(SegmentationModule, cfg.teacher, TEACHER, cfg.loss), self.epochs("teacher"),
                       [SnapshotCheckpoint(snapshots)] if snapshots else [], trained_on="labeled")
        unlabeled = self.data.splits.unlabeled
        if unlabeled and not self.labeled(0):
            teacher = SegmentationModule.from_checkpoint(self.checkpoint_of(TEACHER)).net
            self.label(0, [(unlabeled, [TEACHER], [teacher])], {TEACHER: "labeled"}, self.teacher_stability())

    @one_writer(lambda path: TEACHER)
    def load_teacher(self, path: str) -> None:
        """Use a trained teacher instead of training one: evaluate it and record it as the teacher step."""
        if self.exp.finished(TEACHER):
            return
        start = time.time()
        module = SegmentationModule.from_checkpoint(path)
        require_same_classes(path, module.hparams.num_classes, self.cfg.dataset.name, self.data.num_classes)
        scores = self.evaluate(self.trainer(TEACHER), module, None, SegmentationDataModule(self.data))
        self.exp.save_record(ModelRecord(name=TEACHER, **scores,
                                         checkpoint=os.path.abspath(path), trained_on="loaded",
                                         wall_time_s=round(time.time() - start, 1)))
        barrier()

    def partitions(self, stage: int) -> list[list[Sample]]:
        cfg = self.cfg
        return stage_partitions(self.data.splits.unlabeled, cfg.num_partitions, cfg.seed, stage, cfg.repartition,
                                cfg.get("partition_group"))

    def run_pair_stage(self, stage: int) -> bool:
        """Train stage `stage`'s students, then cross-label; False while some member is still missing."""
        cfg = self.cfg
        parts = self.partitions(stage)
        names = student_names(stage, cfg.num_partitions)
        labels = self.exp.store.reader(stage - 1)
        for i, name in enumerate(names):
            if cfg.member is not None and member_of(name) != str(cfg.member):
                continue
            previous = student_names(stage - 1, cfg.num_partitions)[i] if stage > 1 else None
            init = self.checkpoint_of(previous) if cfg.warm_start and previous else None

            self.train(name, lambda part=parts[i], name=name: self.pseudo_label_data(part, labels, name),
                       lambda name=name, init=init: self.student(name, init), self.epochs("student"), stage=stage,
                       trained_on=i)
        waiting = [n for n in names if not self.exp.finished(n)]
        if waiting:
            log.info("stage %d: cross-labeling waits for %s", stage, ", ".join(waiting))
            return False
        if self.labeled(stage):
            return True
        nets = [StudentModule.from_checkpoint(self.checkpoint_of(n)).net for n in names]
        jobs = [(part, [n for i, n in enumerate(names) if i != j], [m for i, m in enumerate(nets) if i != j])
                for j, part in enumerate(parts)]
        try:
            self.label(stage, jobs, {n: i for i, n in enumerate(names)})
        except StepLockedError as err:
            if cfg.member is None:
                raise
            # two members that finish together both reach cross-labeling; one of them does it
            log.info("stage %d: cross-labeling is left to the process that holds its lock (%s)", stage, err)
            return False
        return True

    def pseudo_label_data(self, samples: list[Sample], labels: StageReader, step: str) -> PseudoLabelDataModule:
        """Student `step`'s DataModule: `samples` with `labels`, less the images the stage marked unreliable."""
        cfg = self.cfg
        return PseudoLabelDataModule(self.data, reliable_only(samples, labels.unreliable, step), labels,
                                     labeled_weight=cfg.labeled_weight,
                                     confidence_threshold=cfg.pseudo.confidence_threshold,
                                     soft_topk=cfg.pseudo.soft_topk if cfg.student_loss.soft_weight else 0,
                                     strong=cfg.student_aug, labeled_fraction=cfg.get("labeled_fraction"),
                                     seed=self.seed(step))

    def run_final(self) -> None:
        labels = self.exp.store.reader(self.cfg.num_stages - 1)
        self.train(FINAL, lambda: self.pseudo_label_data(self.data.splits.unlabeled, labels, FINAL),
                   lambda: self.student(FINAL), self.epochs("final"), trained_on="all")

    def run(self) -> dict | None:
        stage = self.cfg.stage
        if stage in ("all", "teacher"):
            self.run_teacher()
        ready = True
        if stage in ("all", "pairs"):
            pair_stages = [self.cfg.pair_stage] if self.cfg.pair_stage else range(1, self.cfg.num_stages)
            for k in pair_stages:
                ready = self.run_pair_stage(k) and ready
                if not ready:
                    break
        if stage in ("all", "final") and ready:
            self.run_final()
        if not is_rank_zero():
            return None
        results = write_results(self.cfg, self.exp)
        for hook in self.on_results:  # pictures, then W&B's closing run
            hook(results)
        return results
