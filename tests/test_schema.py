"""The config schema (mckd/schema.py): what it refuses at composition, that every shipped config composes against it,
that it is the one place keys are documented and ranged, and that its Enums leave the config as plain strings.
(tests/test_bad_input.py runs the CLI on bad values: one line, exit 2.)"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from dataclasses import fields, is_dataclass
from enum import Enum
from importlib import resources
from pathlib import Path

import pytest
import yaml
from conftest import BIN, cli_env
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from mckd import schema
from mckd.cli import hydra_message
from mckd.pipeline.identity import flatten, identity
from mckd.pipeline.validate import RULES, ConfigError, check_values

CONF = Path(str(resources.files("mckd") / "conf"))


def composed(config: str, *overrides: str):
    with initialize_config_module("mckd.conf", version_base="1.3"):
        return compose(config, overrides=list(overrides))


def options(group: str) -> list[str]:
    return sorted(str(p.relative_to(CONF / group).with_suffix("")) for p in (CONF / group).rglob("*.yaml"))


@pytest.mark.parametrize("config, override, names", [
    ("train", "stage=frist", ("stage=frist", "expected one of [all, teacher, pairs, final]", "full_key: stage")),
    ("train", "stage=first", ("stage=first", "full_key: stage")),  # the old name is renamed by the CLI alone
    ("train", "num_stages=two", ("num_stages=two", "could not be converted to Integer", "full_key: num_stages")),
    ("train", "optim.lrr=1", ("Key 'lrr' not in", "full_key: optim.lrr")),
    ("train", "pseudo.scales=[1,big]", ("full_key: pseudo.scales[1]",)),
    ("train", "dataset.split.max_val=few", ("full_key: dataset.split.max_val",)),
    ("train", "teacher.encoderr=resnet18", ("full_key: teacher.encoderr",)),
    ("train", "student.checkpoint=x.ckpt", ("full_key: student.checkpoint",)),  # the teacher's deprecated key only
    ("eval", "split=tst", ("split=tst", "expected one of [val, test]", "full_key: split")),
    ("eval", "flip=sometimes", ("flip=sometimes", "full_key: flip")),
    # the checkpoint's dataset config is edited with the keys DatasetConfig declares, typed; the reader's open
    # params take a +, as Hydra says
    ("eval", "dataset.eval_batch_size=many", ("full_key: dataset.eval_batch_size",)),
    ("predict", "dataset.params.root=/data", ("To append to your config use +dataset.params.root=/data",)),
    ("predict", "alpha=half", ("alpha=half", "could not be converted to Float", "full_key: alpha")),
    ("predict", "strict=maybe", ("strict=maybe", "full_key: strict")),
])
def test_a_wrong_type_key_or_choice_stops_at_composition(config: str, override: str, names: tuple[str, ...]) -> None:
    with pytest.raises(ConfigCompositionException) as raised:
        composed(config, override)
    message = hydra_message(raised.value)
    assert "\n" not in message and "object_type" not in message
    for name in names:
        assert name in message, message


def test_stage_first_still_runs_the_pair_stages_with_a_warning(tmp_path: Path) -> None:
    """`stage=first` is renamed to `stage=pairs` on the command line (one deprecation warning): on a new experiment
    the pair stages stop at once, asking for the teacher's labels."""
    proc = subprocess.run([str(BIN / "mckd-train"), "debug=smoke", "stage=first", f"hydra.run.dir={tmp_path / 'exp'}"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=cli_env(tmp_path))
    output = proc.stdout + proc.stderr
    warnings = [line for line in output.splitlines() if "[WARNING]" in line and "deprecated" in line]
    assert len(warnings) == 1 and "stage=first (use stage=pairs) is deprecated" in warnings[0], output[-3000:]
    assert proc.returncode == 2 and "pseudo-labels of stage 0 are missing" in output, output[-3000:]
    assert "stage: pairs" in (tmp_path / "exp" / ".hydra" / "config.yaml").read_text()


@pytest.mark.parametrize("preset", options("experiment"))
def test_every_preset_composes_against_the_schema_and_its_ranges(preset: str) -> None:
    for extra in ([], ["debug=smoke"]):
        cfg = composed("train", f"experiment={preset}", "experiment_dir=x", *extra)
        assert OmegaConf.get_type(cfg) is schema.TrainConfig
        check_values(cfg)


def test_every_dataset_and_model_composes_against_the_schema() -> None:
    for name in options("dataset"):
        cfg = composed("train", f"dataset={name}", "experiment_dir=x",
                       *(["dataset.params.root=r", "dataset.params.class_names=[a,b]"] if name == "folder" else []))
        assert OmegaConf.get_type(cfg.dataset) is schema.DatasetConfig
        check_values(cfg)
        assert composed("eval", "checkpoint=x", f"dataset={name}").dataset.name == name
    for name in options("model"):
        cfg = composed("train", f"model@teacher={name}", f"model@student={name}", "experiment_dir=x")
        assert OmegaConf.get_type(cfg.teacher) is schema.TeacherConfig and cfg.student.arch == cfg.teacher.arch


def test_cfg_job_shows_every_key() -> None:
    """`mckd-train --cfg job` prints the composed config: every key the schema declares, with its value."""
    proc = subprocess.run([str(BIN / "mckd-train"), "--cfg", "job"], capture_output=True, text=True, timeout=600,
                          env=cli_env(Path.cwd()), check=True)
    printed = flatten(yaml.safe_load(proc.stdout))
    declared = flatten(OmegaConf.to_container(OmegaConf.structured(schema.TrainConfig)))  # open nodes: no keys
    assert set(declared) <= set(printed)
    assert printed["stage"] == "all" and printed["optim.name"] == "adamw" and printed["trainer.accelerator"] == "cpu"


def documented(cls: type) -> set[str]:
    """The fields `cls` declares with a comment on their line or on the line above."""
    lines = inspect.getsource(cls).splitlines()
    return {match.group(1) for i, line in enumerate(lines) if (match := re.match(r" {4}(\w+): ", line))
            and ("#" in line or lines[i - 1].strip().startswith("#"))}


def test_every_key_is_documented_in_the_schema() -> None:
    """Each field has a comment (beside it or above it); nodes are documented by their class's docstring."""
    for cls in [obj for _, obj in inspect.getmembers(schema, is_dataclass)]:
        nodes = {f.name for f in fields(cls) if is_dataclass(f.default_factory)}
        undocumented = set(cls.__annotations__) - nodes - documented(cls)
        assert not undocumented, f"{cls.__name__}: {sorted(undocumented)}"
        assert all(node.__doc__ for node in [cls, *(f.default_factory for f in fields(cls) if f.name in nodes)])


def test_rules_are_the_schema_ranges() -> None:
    """validate.RULES comes from the fields' `check`: every rule names a key of the composed config, and a field
    that may be null accepts null."""
    cfg = composed("train", "experiment_dir=x")
    absent = object()
    assert all(OmegaConf.select(cfg, key, default=absent) is not absent for key in RULES)
    assert {"num_stages", "optim.lr", "pseudo.reliable_fraction", "dataset.crop_size", "teacher.checkpoint",
            "dataset.split.max_val", "train.final_epochs"} <= set(RULES)
    assert RULES["pair_stage"].ok(None) and not RULES["num_stages"].ok(None)
    assert RULES["pseudo.reliable_fraction"].expected == "null or a number in (0, 1]"


def test_a_config_made_without_the_schema_has_its_choices_checked() -> None:
    """`Pipeline(cfg)` with a config that did not go through Hydra: an Enum's members are a rule too, and the old
    `first` is no longer one (the CLI renames it)."""
    cfg = OmegaConf.create({"stage": "first", "num_stages": 2, "num_partitions": 2})
    with pytest.raises(ConfigError, match=re.escape("stage='first': expected one of all, teacher, pairs, final")):
        check_values(cfg)


def no_enums(value) -> bool:
    if isinstance(value, dict):
        return all(no_enums(v) for v in value.values())
    if isinstance(value, list):
        return all(no_enums(v) for v in value)
    return not isinstance(value, Enum)


def test_enums_leave_the_config_as_plain_strings() -> None:
    """Code compares the Enum values with strings and formats them; JSON, YAML, checkpoints and W&B get str."""
    cfg = composed("train", "experiment_dir=x", "stage=teacher", "optim.name=sgd")
    assert cfg.stage == "teacher" and f"stage={cfg.stage}" == "stage=teacher" and cfg.stage in ("all", "teacher")
    assert type(schema.plain(cfg.optim)["name"]) is str
    assert no_enums(schema.plain(cfg)) and no_enums(identity(cfg))
    assert yaml.safe_load(yaml.safe_dump(schema.plain(cfg)))["optim"]["name"] == "sgd"
    assert json.loads(json.dumps(identity(cfg)))["optim.name"] == "sgd"
    assert "stage: teacher" in OmegaConf.to_yaml(cfg)  # Hydra's .hydra/config.yaml
