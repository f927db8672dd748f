"""The config schema: every key that mckd-train, mckd-eval and mckd-predict read, its type, default and meaning.

Hydra composes the yaml files of mckd/conf onto these dataclasses (structured configs, which `register()` stores
in Hydra's ConfigStore as train_schema, eval_schema and predict_schema: the first entry of the defaults lists of
train.yaml, eval.yaml and predict.yaml). A value of the wrong type, a key not declared here or a choice outside
an Enum stops at composition, with Hydra's message naming the key. What a key's value must satisfy beyond its
type, its range, is the field's `check` (`setting(default, check)`), checked after composition by
mckd/pipeline/validate.py with the rules that tie keys together.

Each key is documented by the comment beside or above it; `mckd-train --cfg job` prints the composed config.
Open (any key): trainer, logger, launcher, dataset.params and a model's kwargs, which are passed on as keyword
arguments (to Lightning's Trainer, W&B, the launcher, the dataset's reader, smp.create_model). mckd-eval's and
mckd-predict's dataset is a DatasetConfig too: `dataset=NAME` composes onto it, and without it the keys given as
`dataset.KEY=VALUE` are applied over the dataset config the checkpoint carries (mckd/checkpoints.py).
"""

import copy
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, NamedTuple

from omegaconf import MISSING, OmegaConf

try:
    from enum import StrEnum
except ImportError:  # Python 3.10

    class StrEnum(str, Enum):
        """Members are their own values: they compare equal to, and format as, plain strings."""

        def __str__(self) -> str:
            return str.__str__(self)


# -- closed sets: OmegaConf matches a value against the member names, so each name is its value ------------------
class Stage(StrEnum):
    all = "all"          # the whole pipeline
    teacher = "teacher"  # the teacher, then its labels of the unlabeled split
    pairs = "pairs"      # the student-pair stages (`pair_stage=`, `member=` narrow it); old name: first
    final = "final"      # the final student


class Optimizer(StrEnum):
    adamw = "adamw"
    sgd = "sgd"


class ResumeMismatch(StrEnum):
    stop = "stop"    # stop, naming the keys that differ
    allow = "allow"  # go on anyway (the stored identity is kept)


class EvalSplit(StrEnum):
    val = "val"
    test = "test"


# -- ranges, checked after composition (mckd/pipeline/validate.py) ---------------------------------------------
class Rule(NamedTuple):
    ok: Callable[[Any], bool]
    expected: str


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(minimum: int | None = None) -> Rule:
    return Rule(lambda v: is_int(v) and (minimum is None or v >= minimum),
                "an integer" if minimum is None else f"an integer >= {minimum}")


def number(minimum: float | None = None, below: float | None = None, positive: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        return (is_number(v) and (minimum is None or v >= minimum) and (below is None or v < below)
                and (not positive or v > 0))

    bounds = [f">= {minimum:g}" if minimum is not None else "", f"< {below:g}" if below is not None else "",
              "> 0" if positive else ""]
    return Rule(ok, " ".join(["a number", " and ".join(b for b in bounds if b)]).strip())


def fraction() -> Rule:
    return Rule(lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]")


def share() -> Rule:
    return Rule(lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1]")


def text(expected: str = "a path") -> Rule:
    return Rule(lambda v: isinstance(v, str) and v != "", expected)


def size() -> Rule:
    return Rule(lambda v: isinstance(v, list) and len(v) == 2 and all(is_int(x) and x > 0 for x in v),
                "[height, width] of positive integers")


def span() -> Rule:
    return Rule(lambda v: isinstance(v, list) and len(v) == 2 and all(is_number(x) and x > 0 for x in v)
                and v[0] <= v[1], "[low, high] with 0 < low <= high")


def positive_numbers() -> Rule:
    return Rule(lambda v: isinstance(v, list) and len(v) > 0 and all(is_number(x) and x > 0 for x in v),
                "a non-empty list of positive numbers")


def one_of(choices: type[Enum]) -> Rule:
    return Rule(lambda v: v in set(choices), f"one of {', '.join(choices)}")


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), f"null or {rule.expected}")


def setting(default: Any = MISSING, check: Rule | None = None) -> Any:
    """A field with its default (a list or dict is copied for each config) and the range it must be in."""
    metadata = {} if check is None else {"check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def node(schema: type) -> Any:
    return field(default_factory=schema)


def checks(schema: type, prefix: str = "") -> dict[str, Rule]:
    """{dotted key: Rule} of every field of `schema` (and of its nodes) that has a range or is an Enum (for configs
    made without the schema, e.g. by OmegaConf.create); a field that may be null accepts null too."""
    found: dict[str, Rule] = {}
    hints = typing.get_type_hints(schema)
    for item in fields(schema):
        key, kind = prefix + item.name, hints[item.name]
        if is_dataclass(kind):
            found.update(checks(kind, f"{key}."))
        elif isinstance(kind, type) and issubclass(kind, Enum):
            found[key] = one_of(kind)
        elif "check" in item.metadata:
            rule = item.metadata["check"]
            found[key] = optional(rule) if type(None) in typing.get_args(kind) else rule
    return found


# -- mckd-train ------------------------------------------------------------------------------------------------
@dataclass
class SplitConfig:
    """dataset.split: which train images are labeled (a list, or a count or ratio drawn with `seed`), and limits."""

    # split lists: lines `IMAGE MASK` with paths relative to the dataset root; a list is a file, or one shipped in
    # mckd/splits (cityscapes/1_16/labeled.txt ...)
    labeled_list: str | None = setting(None, text())
    unlabeled_list: str | None = setting(None, text())  # null: the train images that are not labeled
    unlabeled_masks: bool | None = None  # read unlabeled_list's masks (for the pseudo-label mIoU); null: true
    val_list: str | None = setting(None, text())  # null: the dataset's val images
    num_labeled: int | None = setting(None, integer(1))  # without labeled_list: draw this many labeled images
    labeled_ratio: float | None = setting(None, share())  # ... or this share of the train images with a mask
    seed: int | None = None  # the draw's seed (the dataset configs: ${seed}); null: 0
    max_labeled: int | None = setting(None, integer(1))  # use at most this many labeled images; null: all
    max_unlabeled: int | None = setting(None, integer(1))  # ... unlabeled images
    max_val: int | None = setting(None, integer(1))  # ... val images
    max_test: int | None = setting(None, integer(1))  # ... test images


@dataclass
class DatasetConfig:
    """dataset (config group): a reader with its params, the splits, the training and evaluation pipelines."""

    name: str = MISSING  # the dataset's name in reports, checkpoints and output directories
    kind: str = MISSING  # the reader: synthetic | cityscapes | coco | folder (mckd/data/registry.py)
    params: dict[str, Any] = setting({})  # the reader's keyword arguments (root, class_names, ...)
    split: SplitConfig = node(SplitConfig)
    crop_size: list[int] = setting(MISSING, size())  # [h, w] training crop
    base_size: list[int] | None = setting(None, size())  # [h, w] resize before the random scale; null: as is
    scale_range: list[float] = setting([0.5, 2.0], span())  # [lo, hi] random scale of training images
    color_jitter: float = setting(0.0, number(0))  # ColorJitter strength on training images (0: none)
    hflip: bool = True  # random horizontal flips in training
    eval_size: list[int] | None = setting(None, size())  # [h, w] evaluation input; null: the full image
    batch_size: int = setting(8, integer(1))  # training batch size (per GPU)
    min_epoch_size: int | None = setting(None, integer(0))  # smaller training sets are repeated up to this many
                                                            # samples per epoch; null or 0: one pass
    eval_batch_size: int | None = setting(None, integer(1))  # null: batch_size
    num_workers: int = setting(0, integer(0))  # DataLoader worker processes


@dataclass
class ModelConfig:
    """A network (config group model: `model@student=NAME`, `model@teacher=NAME`; mckd/models/factory.py)."""

    # an smp architecture (Unet, DeepLabV3Plus, ...) or a torchvision model (lraspp_mobilenet_v3_large, deeplabv3_*,
    # fcn_*)
    arch: str = MISSING
    encoder: str | None = None  # smp: resnet50, mobilenet_v2, tu-<timm model> ...; null: smp's resnet34
    # null: random initialisation | a hub or torchvision weights name (needs internet) | a local .pth file
    encoder_weights: str | None = None
    decoder_atrous_rates: Any = None  # DeepLabV3Plus's ASPP rates: auto (fitted to dataset.crop_size) or a list
    kwargs: dict[str, Any] = setting({})  # any other smp.create_model argument (+student.kwargs.encoder_depth=4)


@dataclass
class TeacherConfig(ModelConfig):
    """teacher (config group model, `model@teacher=NAME`): the teacher's network."""

    checkpoint: str | None = setting(None, text())  # deprecated spelling of teacher_checkpoint (until the next
                                                    # release)


@dataclass
class EpochsConfig:
    """train: epochs per model (an epoch is at least dataset.min_epoch_size samples)."""

    teacher_epochs: int = setting(20, integer(1))  # the teacher
    student_epochs: int | None = setting(None, integer(1))  # pair students; null: teacher_epochs x student_ratio
    final_epochs: int | None = setting(None, integer(1))  # the final student; null: teacher_epochs x student_ratio
    # students train this many times as long as the teacher (they see more, and noisier, data)
    student_ratio: float = setting(2.0, number(positive=True))
    # e.g. 0.999: every model keeps an exponential moving average of its weights (Lightning's EMAWeightAveraging);
    # validation, checkpoints and labeling use the average
    ema_decay: float | None = setting(None, number(0, below=1))


@dataclass
class OptimConfig:
    """optim: every model's optimizer; its learning rate decays by a poly schedule."""

    name: Optimizer = Optimizer.adamw  # adamw | sgd
    lr: float = setting(0.002, number(positive=True))  # the learning rate at the first step
    weight_decay: float = setting(0.0001, number(0))  # decoupled (adamw) or L2 (sgd)
    momentum: float = setting(0.9, number(0, below=1))  # sgd only
    nesterov: bool | None = None  # sgd only; null: false
    poly_power: float = setting(0.9, number(0))  # lr * (1 - step / total_steps) ** poly_power


@dataclass
class LossConfig:
    """loss: the teacher's loss."""

    ce_weight: float = setting(1.0, number(0))  # cross-entropy
    dice_weight: float = setting(0.0, number(0))  # Dice


@dataclass
class StudentLossConfig:
    """student_loss: the students' loss."""

    # hard cross-entropy on pseudo-labels (pixels below pseudo.confidence_threshold ignored)
    ce_weight: float = setting(1.0, number(0))
    soft_weight: float = setting(0.0, number(0))  # KL to the stored soft labels (needs pseudo.soft_topk > 0)
    dice_weight: float = setting(0.0, number(0))  # Dice on pseudo-labels
    temperature: float = setting(1.0, number(positive=True))  # of the soft labels' KL


@dataclass
class PseudoConfig:
    """pseudo: how pseudo-labels are made and read."""

    flip: bool = True  # horizontal-flip test-time augmentation
    # multi-scale labeling: class probabilities averaged over these scales (and flips)
    scales: list[float] = setting([0.75, 1.0, 1.25, 1.5], positive_numbers())
    # stage k's labels = (1 - w) * its labelers' + w * stage k-1's (0: the labelers' alone)
    previous_weight: float = setting(0.0, fraction())
    # per-class offsets fitted on each labeler's predictions so that its labels hold each class in the labeled
    # ground truth's share of the pixels (DARS, He et al. 2021): the rare classes a labeler under-predicts get
    # their pixels back instead of fading stage by stage (synthetic: higher labels and final students in every
    # seed measured, docs/benchmarks.md); labeling predicts every image twice
    match_class_shares: bool = True
    window: list[int] | None = setting(None, size())  # [h, w]: sliding-window inference
    stride: list[int] | None = setting(None, size())  # [h, w] window stride; null: the window (no overlap)
    soft_topk: int = setting(0, integer(0))  # also store the top-k class probabilities (fp16)
    confidence_threshold: float = setting(0.0, number(0, below=1))  # students ignore pixels labeled less surely
    # ST++'s selection, e.g. 0.5: the teacher also saves itself after 1/3 and 2/3 of its epochs; images are ranked
    # by the mean mIoU of those checkpoints' predictions against its last epoch's, and the first students train on
    # this most stable share only (later stages on all); null: off. Needs train.teacher_epochs >= 3 and no
    # teacher_checkpoint
    reliable_fraction: float | None = setting(None, share())


@dataclass
class StudentAugConfig:
    """student_aug: student noise on pseudo-labeled images only; ground-truth images keep the dataset's pipeline."""

    scale_range: list[float] | None = setting(None, span())  # [lo, hi] random scale; null: dataset.scale_range
    # the strong noise defaults are ST++ / UniMatch's; they raised the synthetic labels in every seed (docs/benchmarks.md)
    color_jitter: float = setting(0.5, number(0))  # ColorJitter(s, s, s, s/2) strength (ST++/UniMatch: 0.5) ...
    color_jitter_prob: float = setting(0.8, fraction())  # ... applied with this chance
    grayscale_prob: float = setting(0.2, fraction())  # RandomGrayscale (ST++/UniMatch: 0.2)
    blur_prob: float = setting(0.5, fraction())  # Gaussian blur with sigma in blur_sigma (ST++/UniMatch: 0.5)
    blur_sigma: list[float] = setting([0.1, 2.0], span())  # [lo, hi] of the blur's sigma
    cutout_prob: float = setting(0.5, fraction())  # CutOut: a random box of noise, its labels ignored (ST++: 0.5)
    # chance per pseudo-labeled sample of pasting a box from another one (UniMatch: 0.5)
    cutmix_prob: float = setting(0.0, fraction())


@dataclass
class PicturesConfig:
    """pictures: drawn into the experiment directory at the end of a run (mckd/pipeline/pictures.py)."""

    enabled: bool = True  # false: no pictures
    num_images: int = setting(4, integer(1))  # val images in the qualitative picture


@dataclass
class InferenceConfig:
    """eval: validation and test inference."""

    flip: bool = False  # horizontal-flip test-time augmentation
    window: list[int] | None = setting(None, size())  # [h, w]: sliding-window inference
    stride: list[int] | None = setting(None, size())  # [h, w] window stride; null: the window (no overlap)


@dataclass
class TrainConfig:
    """mckd-train (train.yaml): the MCKD pipeline. Every key can be overridden on the command line (key=value)."""

    stage: Stage = Stage.all  # all | teacher | pairs (the student-pair stages) | final
    seed: int = 0  # every step seeds itself from it and its name; the dataset configs' split seed
    experiment_dir: str = "${hydra:runtime.output_dir}"  # where every artifact goes; re-use it to resume
    num_stages: int = setting(2, integer(1))  # K: teacher, K-1 student-pair stages, final student
    num_partitions: int = setting(2, integer(1))  # N: disjoint partitions (= students) per pair stage
    pair_stage: int | None = setting(None, integer(1))  # with stage=pairs: run only this pair stage (1..K-1)
    member: str | None = None  # with stage=pairs: train only this pair member (a, b, ...)
    repartition: bool = False  # reshuffle partitions every stage (seeded) instead of keeping them fixed
    # a regex over sample ids whose first group keeps samples together (e.g. '^([^_]+)_' for CamVid's video
    # sequences): a student never sees frames next to those it labels
    partition_group: str | None = setting(None, text("a regular expression"))
    # pair students start from the previous stage's student of the same partition (not with repartition: that
    # student may have trained on the images its successor labels)
    warm_start: bool = False
    # students also train on the labeled split with this loss weight (0: not at all)
    labeled_weight: float = setting(1.0, number(0))
    # share of every student batch drawn from the labeled split (ST++/UniMatch's 1:1); null: the labeled split's
    # share of the student's items
    labeled_fraction: float | None = setting(0.5, fraction())
    # networks always run channels-last; true: the input batches are converted too (before the first convolution)
    channels_last: bool = False
    # an existing experiment re-run with other identity settings (dataset, models, num_stages, seed, losses,
    # optim, ...: mckd/pipeline/identity.py): stop, naming them | allow: go on anyway
    resume_mismatch: ResumeMismatch = ResumeMismatch.stop
    teacher_checkpoint: str | None = setting(None, text())  # a trained teacher's .ckpt: load it, train none
    dataset: DatasetConfig = node(DatasetConfig)
    teacher: TeacherConfig = node(TeacherConfig)
    student: ModelConfig = node(ModelConfig)
    train: EpochsConfig = node(EpochsConfig)
    optim: OptimConfig = node(OptimConfig)
    loss: LossConfig = node(LossConfig)
    student_loss: StudentLossConfig = node(StudentLossConfig)
    pseudo: PseudoConfig = node(PseudoConfig)
    student_aug: StudentAugConfig = node(StudentAugConfig)
    pictures: PicturesConfig = node(PicturesConfig)
    eval: InferenceConfig = node(InferenceConfig)
    # open: keyword arguments passed on as they are
    trainer: dict[str, Any] = setting({})  # config group trainer: Lightning Trainer arguments
    logger: dict[str, Any] = setting({})  # config group logger: {wandb: null, or W&B settings}
    launcher: dict[str, Any] = setting({})  # config group launcher: none | local | slurm (mckd/pipeline/jobs.py)


# -- mckd-eval, mckd-predict -----------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    """mckd-eval (eval.yaml): mIoU, per-class IoU and accuracy, and pixel accuracy of a checkpoint on a split."""

    checkpoint: str = MISSING  # a .ckpt file, or an experiment directory (its `step`)
    step: str = "final"  # with an experiment directory: which model (teacher, stage1-a, ..., final)
    split: EvalSplit = EvalSplit.val  # val | test
    flip: bool | None = None  # horizontal-flip TTA; null: as the model was validated in training (eval.flip)
    window: list[int] | None = None  # [h, w] sliding-window inference; null: as in training
    stride: list[int] | None = None  # [h, w] window stride; null: as in training, else the window (no overlap)
    output: str | None = None  # the JSON file; null: the experiment's eval folder, or beside the checkpoint
    seed: int = 0  # what dataset configs' split seed (${seed}) resolves to; val and test do not depend on it
    # the dataset config the checkpoint carries, with the dataset.KEY=VALUE given (+dataset.params.KEY=VALUE for
    # the reader's arguments); dataset=NAME: conf/dataset/NAME.yaml instead
    dataset: DatasetConfig = node(DatasetConfig)
    trainer: dict[str, Any] = setting({})  # config group trainer (trainer=gpu to evaluate on a GPU)


@dataclass
class PredictConfig:
    """mckd-predict (predict.yaml): a checkpoint on a folder of images: class-id PNGs, colour masks, overlays."""

    checkpoint: str = MISSING  # a .ckpt file, or an experiment directory (its `step`)
    step: str = "final"  # with an experiment directory: which model (teacher, stage1-a, ..., final)
    input: str = MISSING  # a directory of images (not recursive) or one image file
    output: str = MISSING  # where labels/, color/, overlay/ and predictions.json are written
    strict: bool = False  # true: stop at the first image that cannot be read (default: report it, go on)
    device: str = "auto"  # auto (GPU if any) | cpu | cuda | cuda:1 ...
    alpha: float = 0.5  # weight of the colour mask in the overlays
    flip: bool | None = None  # horizontal-flip TTA; null: as the model was validated in training
    window: list[int] | None = None  # [h, w] sliding-window inference (large images); null: as in training
    stride: list[int] | None = None  # [h, w] window stride; null: as in training
    seed: int = 0  # what dataset configs' split seed (${seed}) resolves to; predictions do not depend on it
    # the dataset config the checkpoint carries (palette, eval_size), with the dataset.KEY=VALUE given, as in
    # mckd-eval; dataset=NAME: conf/dataset/NAME.yaml instead
    dataset: DatasetConfig = node(DatasetConfig)


SCHEMAS = {"train_schema": TrainConfig, "eval_schema": EvalConfig, "predict_schema": PredictConfig}


def register() -> None:
    """Store the schemas in Hydra's ConfigStore, where train.yaml, eval.yaml and predict.yaml name them."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(name=name, node=schema)


def plain(cfg: Any, resolve: bool = True) -> Any:
    """A config node as plain dicts, lists and strings (Enum values as their names, which are their values): what
    goes into JSON, YAML, checkpoints' hyperparameters and W&B."""
    return OmegaConf.to_container(cfg, resolve=resolve, enum_to_str=True) if OmegaConf.is_config(cfg) else cfg
