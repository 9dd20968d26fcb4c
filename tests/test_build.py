"""The builder: the configured optimiser and learning-rate schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustreid.build import build_optimizer, build_scheduler, lr_factor
from robustreid.config import load_config


def _lrs(cfg, epochs: int) -> list[float]:
    optimizer = build_optimizer(cfg, list(nn.Linear(3, 2).parameters()))
    scheduler = build_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_the_defaults_are_adam_and_the_step_schedule():
    cfg = load_config(None, ["train.lr=0.01", "train.step_size=3", "train.gamma=0.5"])
    optimizer = build_optimizer(cfg, list(nn.Linear(3, 2).parameters()))
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.defaults["weight_decay"] == cfg.train.weight_decay
    assert isinstance(build_scheduler(cfg, optimizer), torch.optim.lr_scheduler.StepLR)
    assert _lrs(cfg, 7) == pytest.approx([0.01] * 3 + [0.005] * 3 + [0.0025])


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_the_optimizer_is_chosen_by_name(name, cls):
    cfg = load_config(None, [f"train.optimizer={name}", "train.sgd_momentum=0.8",
                             f"train.nesterov={'true' if name == 'sgd' else 'false'}"])
    optimizer = build_optimizer(cfg, list(nn.Linear(3, 2).parameters()))
    assert type(optimizer) is cls
    if name == "sgd":
        assert optimizer.defaults["momentum"] == 0.8 and optimizer.defaults["nesterov"]


def test_cosine_with_a_linear_warm_up():
    cfg = load_config(None, ["train.lr=0.1", "train.epochs=12", "train.scheduler=cosine",
                             "train.lr_warmup_epochs=2", "train.lr_warmup_factor=0.1",
                             "train.min_lr=0.001"])
    lrs = _lrs(cfg, 13)
    assert lrs[:3] == pytest.approx([0.01, 0.055, 0.1])  # warm-up, then the full rate
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))  # then only down
    assert lrs[7] == pytest.approx(0.001 + 0.099 * 0.5)  # half-way through the cosine
    assert lrs[12] == pytest.approx(0.001)  # the floor at train.epochs


def test_step_schedule_with_warm_up_matches_steplr_afterwards():
    assert [lr_factor(e, "step", 10, 4, 0.1, warmup_epochs=2) for e in range(9)] == \
        pytest.approx([0.1, 0.55, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.01])
