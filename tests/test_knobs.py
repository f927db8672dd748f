"""The self-training knobs: each is applied where it should be and nowhere else."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from test_pipeline import compose_train, smoke
from torch import nn

from mckd import layout
from mckd.data import PredictDataModule, PseudoLabelDataModule, SegmentationData, SegmentationDataModule
from mckd.models.factory import fit_atrous_rates, resolve_input_fitted
from mckd.modules.inference import class_probs, per_sample_labels, share_matching_offsets, stored_probs
from mckd.modules.segmentation import Labeler, SegmentationModule, StudentModule, cutmix
from mckd.pipeline.store import PseudoLabelStore
from mckd.pipeline.validate import ConfigError, check_values
from mckd.visualize import class_counts

STRONG = ("student_aug.color_jitter=0.5", "student_aug.color_jitter_prob=1.0", "student_aug.grayscale_prob=1.0",
          "student_aug.blur_prob=1.0", "student_aug.cutout_prob=1.0")
NO_NOISE = ("student_aug.color_jitter=0", "student_aug.grayscale_prob=0", "student_aug.blur_prob=0",
            "student_aug.cutout_prob=0")


class FakeLabels:
    """A pseudo-label reader that returns the image's ground truth (so labels and masks can be compared)."""

    def __init__(self, data: SegmentationData):
        self.data = data

    def read(self, sample_id: str) -> dict:
        sample = next(s for s in self.data.splits.unlabeled if s.id == sample_id)
        mask = self.data.source.read_mask(sample)
        return {"label": mask, "confidence": np.full(mask.shape, 255, np.uint8)}


class OddClassesUnsure(FakeLabels):
    """Ground truth as labels, labeled surely (255) on even classes and at confidence 100/255 on odd ones."""

    def read(self, sample_id: str) -> dict:
        stored = super().read(sample_id)
        stored["confidence"][stored["label"] % 2 == 1] = 100
        return stored


def student_items(*overrides: str, labels: type[FakeLabels] = FakeLabels,
                  threshold: float = 0.0) -> tuple[list[dict], list[dict]]:
    """One pass over a student's training set without random scale/flip: (pseudo-labeled items, labeled items)."""
    cfg = compose_train("debug=smoke", "dataset.scale_range=[1.0,1.0]", "dataset.hflip=false", *overrides)
    data = SegmentationData.build(cfg.dataset)
    dm = PseudoLabelDataModule(data, data.splits.unlabeled, labels(data), labeled_weight=1.0,
                               confidence_threshold=threshold, strong=cfg.student_aug)
    pseudo, labeled = dm.train_set.datasets
    return [pseudo[i] for i in range(len(pseudo))], [labeled[i] for i in range(len(labeled))]


def test_strong_noise_reaches_pseudo_labeled_images_and_never_ground_truth():
    plain_pseudo, plain_labeled = student_items(*NO_NOISE)
    noisy_pseudo, noisy_labeled = student_items(*STRONG)
    for plain, noisy in zip(plain_labeled, noisy_labeled):  # ground truth: untouched
        assert torch.equal(plain["image"], noisy["image"]) and torch.equal(plain["mask"], noisy["mask"])
    for plain, noisy in zip(plain_pseudo, noisy_pseudo):
        assert not torch.equal(plain["image"], noisy["image"])
        grey = noisy["image"] * torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        grey = grey + torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        erased = noisy["mask"] == 255
        assert erased.any() and not (plain["mask"] == 255).any()  # CutOut ignores its box in the labels
        assert torch.allclose(grey[0][~erased], grey[1][~erased], atol=1e-5)  # grayscale: equal channels


def test_student_colour_jitter_replaces_the_datasets_on_pseudo_labeled_images_even_when_zero():
    plain_pseudo, plain_labeled = student_items(*NO_NOISE)
    pseudo, labeled = student_items(*NO_NOISE, "dataset.color_jitter=0.4")
    for plain, item in zip(plain_pseudo, pseudo):  # student_aug.color_jitter=0: no jitter
        assert torch.equal(plain["image"], item["image"])
    assert any(not torch.equal(plain["image"], item["image"]) for plain, item in zip(plain_labeled, labeled))


@pytest.mark.parametrize("fraction, per_batch", [(0.5, 2), (0.25, 1)])
def test_labeled_fraction_reaches_every_student_batch(tmp_path, fraction, per_batch):
    """The pipeline's student DataModule draws `labeled_fraction` of each batch from the labeled split."""
    from types import SimpleNamespace

    from mckd.pipeline.orchestrator import Pipeline

    pipe = Pipeline(compose_train("debug=smoke", f"experiment_dir={tmp_path}", f"labeled_fraction={fraction}"))
    dm = pipe.pseudo_label_data(pipe.data.splits.unlabeled, SimpleNamespace(unreliable=()), "stage1-a")
    num_pseudo = len(dm.train_set.datasets[0])
    items, size = [i for i, _ in dm.train_sampler()], dm.data.cfg["batch_size"]
    assert size == 4  # debug=smoke
    batches = [items[b:b + size] for b in range(0, len(items), size)]
    assert batches and all(sum(i >= num_pseudo for i in batch) == per_batch for batch in batches)


def test_confidence_threshold_ignores_the_less_sure_pseudo_labels_only():
    plain_pseudo, plain_labeled = student_items(*NO_NOISE, labels=OddClassesUnsure)
    kept_pseudo, kept_labeled = student_items(*NO_NOISE, labels=OddClassesUnsure, threshold=0.5)
    for plain, kept in zip(plain_labeled, kept_labeled):  # ground truth: untouched
        assert torch.equal(plain["mask"], kept["mask"])
    for plain, kept in zip(plain_pseudo, kept_pseudo):
        unsure = (plain["mask"] % 2 == 1) & (plain["mask"] != 255)  # confidence 100/255 < 0.5
        assert unsure.any() and (kept["mask"][unsure] == 255).all()
        assert torch.equal(kept["mask"][~unsure], plain["mask"][~unsure])


def test_cutmix_mixes_per_sample_never_with_itself_nor_ground_truth():
    n = 6
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 16, 16).clone()
    batch = {"image": images, "mask": images[:, 0].long().clone(), "pseudo": torch.tensor([True] * 4 + [False] * 2)}
    mixed = cutmix(batch, torch.Generator().manual_seed(0), prob=1.0)
    for i in range(n):
        sources = set(mixed["mask"][i].unique().tolist())
        assert torch.equal(mixed["image"][i, 0].long(), mixed["mask"][i])  # image and labels mixed alike
        if i < 4:
            assert sources - {i} and sources - {i} <= {0, 1, 2, 3} - {i}  # another pseudo-labeled sample
        else:
            assert sources == {i}  # ground truth is never mixed
    boxes = {tuple((mixed["mask"][i] != i).nonzero().min(0).values.tolist()) for i in range(4)}
    assert len(boxes) > 1  # a box per sample, not one for the batch


class Constant(nn.Module):
    """A 'network' whose logits depend on the input size, so that each scale gives other probabilities."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        logits = torch.zeros(x.shape[0], 3, h, w)
        logits[:, h % 3] = 2.0 + w / 10
        return logits


def test_multi_scale_labels_are_the_argmax_of_averaged_probabilities():
    images = torch.zeros(1, 3, 8, 10)
    probs = class_probs([Constant()], images, flip=True, scales=(0.5, 1.0, 1.5))
    views = [torch.nn.functional.interpolate(Constant()(torch.zeros(1, 3, round(8 * s), round(10 * s))).softmax(1),
                                             size=(8, 10), mode="bilinear") for s in (0.5, 1.0, 1.5)]
    assert torch.allclose(probs, torch.stack(views).mean(0), atol=1e-6)


def test_label_ensemble_with_the_previous_stage_is_the_weighted_mean():
    previous = {"label": np.array([[2, 0]]), "confidence": np.array([[204, 255]], np.uint8)}
    old = stored_probs(previous, 3)
    assert torch.allclose(old[:, 0, 0], torch.tensor([0.1, 0.1, 0.8]), atol=1e-6)

    class Reader:
        def read(self, sample_id):
            return previous

    labeler = Labeler([Constant()], previous=Reader(), previous_weight=0.25)
    new = torch.rand(3, 1, 2).softmax(0)
    assert torch.allclose(labeler.blend_previous("x", new), 0.75 * new + 0.25 * old)


def test_share_matching_offsets_give_each_class_its_target_share():
    probs = (torch.randn(20000, 5, generator=torch.Generator().manual_seed(0))
             + torch.tensor([2.0, 0, 0, -1, -2])).softmax(1)
    shares = torch.tensor([50.0, 20, 15, 10, 5])
    assert (probs.argmax(1) == 0).float().mean() > 0.8  # without offsets: far from those shares
    offsets = share_matching_offsets(probs, shares)
    labels = (probs.log() + offsets).argmax(1)
    assert torch.bincount(labels, minlength=5).float() / len(labels) == pytest.approx((shares / 100).tolist(), abs=2e-3)
    assert offsets.sum().abs() < 1e-4  # centred: only differences between classes matter


def test_labels_are_the_argmax_of_the_offset_log_probabilities():
    probs = torch.rand(1, 3, 4, 5).softmax(1)
    batch = {"id": ["x"], "size": torch.tensor([[4, 5]]), "input_size": torch.tensor([[4, 5]])}
    offsets = torch.tensor([0.0, 0.3, -0.2])
    item = per_sample_labels(probs, batch, offsets=offsets)[0]
    assert torch.equal(item["label"], (probs[0].log() + offsets.view(-1, 1, 1)).argmax(0).int())
    assert torch.equal(per_sample_labels(probs, batch, offsets=torch.zeros(3))[0]["label"], probs[0].argmax(0).int())
    assert (per_sample_labels(probs, batch, offsets=torch.tensor([0.0, 0.0, 50.0]))[0]["label"] == 2).all()


def test_match_class_shares_gives_each_labeler_the_labeled_ground_truths_shares(tmp_path):
    """Stage 0 (the teacher) and stage 1 (each student on the partition it never saw): every labeler's labels hold
    each class in its share of the labeled split's ground-truth pixels."""
    exp = tmp_path / "exp"
    smoke(exp, "pseudo.match_class_shares=true", "pictures.enabled=false")
    data = SegmentationData.build(compose_train("debug=smoke").dataset)
    labeled = np.array(class_counts((data.source.read_mask(s) for s in data.splits.labeled), data.num_classes))
    store = PseudoLabelStore(layout.pseudo_label_dir(exp), data.num_classes)
    for stage in (0, 1):
        reader = store.reader(stage)
        for part in store.manifest(stage)["partitions"]:
            counts = np.array(class_counts((reader.read(i)["label"] for i in part["ids"]), data.num_classes))
            assert counts / counts.sum() == pytest.approx(labeled / labeled.sum(), abs=0.01), (stage, part["index"])


def test_atrous_rates_fit_the_input():
    assert fit_atrous_rates((64, 64)) == [1, 2, 3]
    assert fit_atrous_rates((513, 513)) == [6, 12, 18]
    cfg = resolve_input_fitted({"arch": "DeepLabV3Plus", "decoder_atrous_rates": "auto"}, (128, 160))
    assert cfg["decoder_atrous_rates"] == [1, 2, 3]


def test_evaluation_scores_at_the_masks_own_size():
    cfg = compose_train("debug=smoke", "dataset.eval_size=[32,32]")
    dm = SegmentationDataModule(SegmentationData.build(cfg.dataset))
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape[-2:] == (32, 32) and batch["mask"].shape[-2:] == (64, 64)


def test_student_epochs_default_to_the_teachers_times_the_ratio(tmp_path):
    from mckd.pipeline.orchestrator import Pipeline

    cfg = compose_train(f"experiment_dir={tmp_path}", "train.teacher_epochs=10", "train.student_ratio=1.5",
                        "train.final_epochs=4")
    pipe = Pipeline(cfg)
    assert (pipe.epochs("teacher"), pipe.epochs("student"), pipe.epochs("final")) == (10, 15, 4)


def test_ema_weights_are_what_is_saved_and_scored(tmp_path, monkeypatch):
    """With train.ema_decay, best.ckpt holds the average (not the last weights), and the record's val mIoU is
    that checkpoint's own score: it is scored by a trainer without the callback, which would otherwise swap the
    final average in over whichever checkpoint is loaded (here best and last coincide, so the figures alone
    could not show it)."""
    from lightning.pytorch.callbacks import WeightAveraging
    from test_evaluate import eval_config

    from mckd.evaluate import evaluate
    from mckd.pipeline.orchestrator import Pipeline

    scored_with: list[list[str]] = []
    original = Pipeline.evaluate

    def spy(self, trainer, module, *args):
        scored_with.append([type(c).__name__ for c in trainer.callbacks if isinstance(c, WeightAveraging)])
        return original(self, trainer, module, *args)

    monkeypatch.setattr(Pipeline, "evaluate", spy)
    smoke(tmp_path / "exp", "stage=teacher", "train.ema_decay=0.9")
    assert scored_with and all(found == [] for found in scored_with)
    record = json.loads((tmp_path / "exp" / "steps" / "teacher.json").read_text())
    best = tmp_path / "exp" / record["checkpoint"]
    saved = torch.load(best, map_location="cpu", weights_only=True)
    averaged, current = saved["state_dict"], saved["current_model_state"]
    assert averaged.keys() == current.keys() and "n_averaged" in saved["averaging_state"]
    assert any(not torch.equal(averaged[k], current[k]) for k in averaged if averaged[k].is_floating_point())
    overrides = [f"checkpoint={best}", f"output={tmp_path / 'eval.json'}"]
    assert evaluate(eval_config(*overrides), overrides)["miou"] == pytest.approx(record["val_miou"], abs=1e-4)


@pytest.mark.parametrize("extra", [(), pytest.param(("pseudo.soft_topk=2", "student_loss.soft_weight=1"),
                                                    marks=pytest.mark.slow)])
def test_smoke_pipeline_with_every_knob_on(tmp_path, extra):
    results = smoke(tmp_path / "exp", *STRONG, "labeled_fraction=0.5", "train.student_ratio=2",
                    "pseudo.scales=[0.75,1.0,1.5]", "pseudo.previous_weight=0.3", "num_stages=3",
                    "student_aug.cutmix_prob=1.0", "repartition=true", "train.ema_decay=0.9",
                    "pseudo.confidence_threshold=0.3", "train.teacher_epochs=3", "pseudo.reliable_fraction=0.5",
                    "student_loss.dice_weight=1", "labeled_weight=2", "pseudo.match_class_shares=true", *extra)
    assert [s["stage"] for s in results["stages"]] == [1, 2]
    assert results["final"]["val_miou"] is not None
    manifest = json.loads((tmp_path / "exp" / "pseudo_labels" / "stage2" / "manifest.json").read_text())
    assert manifest["partitions"]


def st_miou(prediction: np.ndarray, reference: np.ndarray, num_classes: int) -> float:
    """ST++'s meanIOU (utils.py) of one prediction against the final model's: classes absent from both skipped."""
    hist = np.bincount(num_classes * reference.ravel() + prediction.ravel(), minlength=num_classes**2)
    hist = hist.reshape(num_classes, num_classes)
    with np.errstate(invalid="ignore"):
        return float(np.nanmean(np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))))


def stability_from_checkpoints(exp, cfg, epochs: list[int]) -> dict[str, float]:
    """Each unlabeled image's mean mIoU of the teacher's earlier checkpoints against its last, computed anew."""
    paths = [*(layout.snapshot_checkpoint(exp, layout.TEACHER, n) for n in epochs),
             layout.last_checkpoint(exp, layout.TEACHER)]
    nets = [SegmentationModule.from_checkpoint(str(p)).net.eval() for p in paths]
    data = SegmentationData.build(cfg.dataset)
    dm = PredictDataModule(data, data.splits.unlabeled)
    scores = {}
    with torch.no_grad():
        for batch in dm.predict_dataloader():  # the labeling's batches: same images, same arithmetic
            *earlier, final = [net(batch["image"]).argmax(1).numpy() for net in nets]
            for i, sample_id in enumerate(batch["id"]):
                ious = [st_miou(e[i], final[i], dm.num_classes) for e in earlier]
                scores[sample_id] = sum(ious) / len(ious)
    return scores


def test_reliable_fraction_leaves_the_least_stable_images_out_of_the_first_students(tmp_path, monkeypatch):
    """ST++'s selection: the teacher saves itself after 1 and 2 of its 3 epochs; the half of the unlabeled images
    whose predictions agree least with the last epoch's are marked unreliable, and no stage-1 student's loss
    ever sees them, while the final student (stage-1 labels) trains on every image."""
    datasets: list[set[str]] = []  # each student's pseudo-labeled images, in training order
    seen: dict[str, set[str]] = {}
    from mckd.pipeline.orchestrator import Pipeline

    make_datamodule, training_step = Pipeline.pseudo_label_data, StudentModule.training_step

    def spy_dataset(self, *args, **kwargs):
        datamodule = make_datamodule(self, *args, **kwargs)
        datasets.append({s.id for s in datamodule.train_set.datasets[0].samples})  # the pseudo-labeled part
        return datamodule

    def spy_step(self, batch, batch_idx):
        seen.setdefault(self.hparams.name, set()).update(i for i, p in zip(batch["id"], batch["pseudo"]) if p)
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(Pipeline, "pseudo_label_data", spy_dataset)
    monkeypatch.setattr(StudentModule, "training_step", spy_step)
    overrides = ("train.teacher_epochs=3", "pseudo.reliable_fraction=0.5", "pictures.enabled=false")
    exp = tmp_path / "exp"
    smoke(exp, *overrides)
    cfg = compose_train("debug=smoke", *overrides)

    store = PseudoLabelStore(layout.pseudo_label_dir(exp), SegmentationData.build(cfg.dataset).num_classes)
    manifest = store.manifest(0)
    unlabeled = {i for part in manifest["partitions"] for i in part["ids"]}
    unreliable = set(manifest["unreliable"])
    assert len(unlabeled) == 12 and len(unreliable) == 6  # ST++ keeps the first n // 2 by stability
    scores = stability_from_checkpoints(exp, cfg, [1, 2])
    assert len({round(v, 3) for v in scores.values()}) > 1  # the checkpoints disagree: the ranking means something
    assert max(scores[i] for i in unreliable) <= min(scores[i] for i in unlabeled - unreliable) + 1e-3
    assert store.stability(0, unlabeled) == pytest.approx(scores, abs=1e-3)

    first, second, final = datasets  # stage1-a, stage1-b, final
    assert first | second == unlabeled - unreliable and not first & second
    trained = set().union(*(seen[name] for name in layout.student_names(1, 2)))
    assert trained and trained <= unlabeled - unreliable  # what reached a stage-1 student's loss
    assert final == unlabeled  # later stages: every image


@pytest.mark.parametrize("overrides, says", [
    (("train.teacher_epochs=2",), "train.teacher_epochs >= 3"),
    (("teacher_checkpoint=/some/teacher.ckpt",), "teacher_checkpoint loads one"),
    (("pseudo.reliable_fraction=0",), "a number in (0, 1]"),
])
def test_reliable_fraction_refuses_what_it_cannot_score(overrides, says):
    cfg = compose_train("pseudo.reliable_fraction=0.5", *overrides)
    with pytest.raises(ConfigError, match=re.escape(says)):
        check_values(cfg)
