"""The optimizer and learning-rate schedule of every trained module (SegmentationModule.configure_optimizers).

They were hand-written (an if/elif on optim.name, a LambdaLR with the poly formula, train/lr logged by hand);
these tests pin that the library pieces that replaced them (hydra.utils.instantiate, PolynomialLR,
LearningRateMonitor) give what the hand-written code gave.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import OmegaConf

from mckd.modules.segmentation import SegmentationModule, optimizer


def configured(optim: dict, total_steps: int):
    """(optimizer, Lightning's scheduler config) of SegmentationModule.configure_optimizers, on one parameter."""
    params = [torch.nn.Parameter(torch.zeros(3))]
    fake = SimpleNamespace(hparams=SimpleNamespace(optim=optim), parameters=lambda: iter(params),
                           trainer=SimpleNamespace(estimated_stepping_batches=total_steps))
    out = SegmentationModule.configure_optimizers(fake)
    return out["optimizer"], out["lr_scheduler"]


def old_optimizer(cfg: dict, params) -> torch.optim.Optimizer:
    """The hand-written choice it replaced."""
    if cfg["name"] == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 1e-4))
    return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg.get("momentum", 0.9),
                           weight_decay=cfg.get("weight_decay", 1e-4), nesterov=cfg.get("nesterov", False))


@pytest.mark.parametrize("cfg", [
    {"name": "adamw", "lr": 0.002, "weight_decay": 0.0001, "momentum": 0.9, "poly_power": 0.9},  # the defaults
    {"name": "adamw", "lr": 0.001},  # keys left out take the old defaults
    {"name": "sgd", "lr": 0.005, "weight_decay": 0.0001, "momentum": 0.9, "poly_power": 0.9},  # the presets
    {"name": "sgd", "lr": 0.01, "nesterov": True},
])
def test_the_optimizer_is_the_hand_written_one(cfg: dict) -> None:
    built, _ = configured(cfg, 10)
    expected = old_optimizer(cfg, [torch.nn.Parameter(torch.zeros(3))])
    assert type(built) is type(expected)
    assert built.defaults == expected.defaults


def test_a_null_key_takes_the_optimizer_default() -> None:
    """The schema's `optim.nesterov` is null (sgd's default, false) unless set."""
    from mckd.schema import OptimConfig, plain

    built, _ = configured(plain(OmegaConf.structured(OptimConfig(name="sgd"))), 10)
    assert type(built) is torch.optim.SGD and built.defaults["nesterov"] is False
    assert built.defaults["momentum"] == 0.9 and built.defaults["weight_decay"] == 0.0001


def test_an_unknown_optimizer_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"optim.name='adam': expected 'adamw' or 'sgd'"):
        optimizer({"name": "adam", "lr": 0.1})


@pytest.mark.parametrize("total, power", [(300, 0.9), (257, 1.0), (40, 2.0), (1, 0.9)])
def test_the_poly_schedule_gives_the_old_learning_rate_at_every_step(total: int, power: float) -> None:
    """PolynomialLR against the old LambdaLR(lambda step: max(0, 1 - step / total) ** power), per optimizer step
    and past the end. PolynomialLR multiplies the rate by a factor per step where the old formula computed it
    afresh, so the two agree to rounding (1e-12 relative), and exactly in float32 (what train/lr was logged as)."""
    cfg = {"name": "sgd", "lr": 0.005, "poly_power": power}
    new, sched_cfg = configured(cfg, total)
    assert sched_cfg["interval"] == "step"
    old = old_optimizer(cfg, [torch.nn.Parameter(torch.zeros(3))])
    old_sched = torch.optim.lr_scheduler.LambdaLR(old, lambda step: max(0.0, 1 - step / total) ** power)
    new_lrs, old_lrs = [], []
    for _ in range(total + 30):
        new_lrs.append(new.param_groups[0]["lr"])
        old_lrs.append(old.param_groups[0]["lr"])
        for opt, sched in ((new, sched_cfg["scheduler"]), (old, old_sched)):
            opt.step()
            sched.step()
    assert new_lrs == pytest.approx(old_lrs, rel=1e-12, abs=1e-18)
    np.testing.assert_array_equal(np.float32(new_lrs), np.float32(old_lrs))
    assert new_lrs[0] == 0.005 and new_lrs[total:] == [0.0] * 30


def test_the_learning_rate_is_logged_as_train_lr() -> None:
    """LearningRateMonitor logs a scheduler under its config's name."""
    _, sched_cfg = configured({"name": "adamw", "lr": 0.002}, 10)
    assert sched_cfg["name"] == "train/lr"
    monitors = SegmentationModule.configure_callbacks(None)
    assert [type(m) for m in monitors] == [LearningRateMonitor] and monitors[0].logging_interval == "step"


def test_the_schema_knows_the_same_optimizers():
    """The schema (mckd/schema.py) refuses other optim.name values at composition: it must name what the module
    builds."""
    from mckd.modules.segmentation import OPTIMIZERS as BUILT
    from mckd.schema import Optimizer

    assert set(Optimizer) == set(BUILT)
