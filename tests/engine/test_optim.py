from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medlens.engine import (
    ConfigError,
    FocalLoss,
    MaskedBCEWithLogitsLoss,
    RegressionMSELoss,
    TrainConfig,
    build_loss,
    build_optimizer,
    build_scheduler,
)

from .conftest import blobs, mlp


def lrs(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate used at each iteration of the whole run."""
    optimizer = build_optimizer([nn.Parameter(torch.zeros(1))], config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    out = []
    for _ in range(config.epochs * steps_per_epoch):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(
    "changes",
    [
        {"optimizer": "sgd", "lr": 0.1},
        {"optimizer": "sgd", "lr": 0.1, "nesterov": True},
        {"optimizer": "adam", "lr": 0.01},
        {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.01},
    ],
)
def test_each_optimizer_trains_down_a_separable_problem(changes):
    config = TrainConfig(**changes)
    x, y = blobs(64)
    model = mlp()
    optimizer = build_optimizer(model.parameters(), config)
    first = F.cross_entropy(model(x), y).item()
    for _ in range(60):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first
    assert type(optimizer).__name__.lower() == config.optimizer


def test_optimizer_settings_reach_torch():
    config = TrainConfig(optimizer="sgd", lr=0.2, momentum=0.8, nesterov=True, weight_decay=0.1)
    group = build_optimizer([nn.Parameter(torch.zeros(1))], config).param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (
        0.2,
        0.8,
        True,
        0.1,
    )
    group = build_optimizer([nn.Parameter(torch.zeros(1))], TrainConfig(betas=(0.5, 0.6)))
    assert group.param_groups[0]["betas"] == (0.5, 0.6)
    with pytest.raises(ConfigError, match="needs momentum"):
        build_optimizer([nn.Parameter(torch.zeros(1))], config.replace(momentum=0.0))


def test_warmup_then_cosine_at_known_steps():
    config = TrainConfig(lr=0.1, epochs=3, warmup_epochs=1, schedule="cosine", min_lr=0.01)
    got = lrs(config, steps_per_epoch=10)
    assert got[0] == pytest.approx(0.01)  # 1/10 of the rate on the first warm-up step
    assert got[4] == pytest.approx(0.05)
    assert got[9] == pytest.approx(0.1)  # full rate on the last warm-up step
    assert got[10] == pytest.approx(0.1)  # cosine starts at the peak
    assert got[20] == pytest.approx(0.01 + 0.09 * 0.5)  # half-way down the cosine
    assert got[29] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert all(a >= b for a, b in itertools.pairwise(got[9:]))


def test_step_onecycle_and_constant_schedules():
    step = lrs(TrainConfig(lr=0.1, epochs=4, schedule="step", step_size=2, gamma=0.5), 5)
    assert step[:10] == pytest.approx([0.1] * 10)
    assert step[10:] == pytest.approx([0.05] * 10)
    warm_step = lrs(
        TrainConfig(lr=0.1, epochs=3, schedule="step", step_size=1, gamma=0.5, warmup_epochs=1), 4
    )
    assert warm_step == pytest.approx(
        [0.025, 0.05, 0.075, 0.1, 0.05, 0.05, 0.05, 0.05, *[0.025] * 4]
    )
    constant = lrs(TrainConfig(lr=0.1, epochs=2, schedule="constant", warmup_epochs=0.5), 4)
    assert constant == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    # One-cycle: rise from lr/25 over 30 % of the run (3 of 10 steps), then cosine down to 0.
    cycle = lrs(TrainConfig(lr=0.1, epochs=2, schedule="onecycle"), 5)
    start = 0.1 / 25
    assert cycle[:3] == pytest.approx([start + (0.1 - start) * k / 3 for k in (1, 2, 3)])
    assert cycle[2] == max(cycle)
    assert cycle[3] == pytest.approx(0.1) and cycle[-1] < 0.01


def test_scheduler_state_restores_position():
    config = TrainConfig(lr=0.1, epochs=3, warmup_epochs=1)
    optimizer = build_optimizer([nn.Parameter(torch.zeros(1))], config)
    scheduler = build_scheduler(optimizer, config, 10)
    for _ in range(13):
        optimizer.step()
        scheduler.step()
    state = (optimizer.state_dict(), scheduler.state_dict())
    fresh_opt = build_optimizer([nn.Parameter(torch.zeros(1))], config)
    fresh = build_scheduler(fresh_opt, config, 10)
    fresh_opt.load_state_dict(state[0])
    fresh.load_state_dict(state[1])
    assert fresh_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    fresh_opt.step()
    fresh.step()
    optimizer.step()
    scheduler.step()
    assert fresh_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


# ---------------------------------------------------------------------- losses
def test_build_loss_picks_module_and_settings():
    ce = build_loss(TrainConfig(label_smoothing=0.1, class_weights=(1.0, 2.0)))
    assert isinstance(ce, nn.CrossEntropyLoss) and ce.label_smoothing == 0.1
    assert ce.weight.tolist() == [1.0, 2.0]
    assert isinstance(build_loss(TrainConfig(), "multilabel"), MaskedBCEWithLogitsLoss)
    assert isinstance(build_loss(TrainConfig(), "regression"), RegressionMSELoss)
    assert isinstance(build_loss(TrainConfig(), "ordinal"), nn.CrossEntropyLoss)
    assert isinstance(build_loss(TrainConfig(loss="bce")), MaskedBCEWithLogitsLoss)
    focal = build_loss(TrainConfig(loss="focal", focal_gamma=1.5), "multilabel")
    assert isinstance(focal, FocalLoss) and focal.mode == "multilabel" and focal.gamma == 1.5
    assert build_loss(TrainConfig(loss="focal")).mode == "multiclass"
    with pytest.raises(ConfigError, match="class_weights"):
        build_loss(TrainConfig(loss="mse", class_weights=(1.0,)))
    with pytest.raises(ConfigError, match="focal_alpha"):
        build_loss(TrainConfig(loss="focal", focal_alpha=0.25))


def test_focal_multiclass_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    target = torch.tensor([0, 2])
    expected = []
    for row, t in zip(logits.tolist(), target.tolist(), strict=True):
        p = math.exp(row[t]) / sum(math.exp(v) for v in row)
        expected.append(-((1 - p) ** 2) * math.log(p))
    loss = FocalLoss(2.0)(logits, target)
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    weight = torch.tensor([1.0, 1.0, 3.0])
    weighted = FocalLoss(2.0, weight=weight)(logits, target)
    assert weighted.item() == pytest.approx((expected[0] + 3 * expected[1]) / 4, rel=1e-6)


def test_focal_sigmoid_by_hand():
    logits = torch.tensor([[1.0, -2.0]])
    target = torch.tensor([[1.0, 0.0]])
    p1, p2 = 1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(2.0))
    a = 0.25
    by_hand = [-a * (1 - p1) ** 2 * math.log(p1), -(1 - a) * p2**2 * math.log(1 - p2)]
    loss = FocalLoss(2.0, alpha=a, mode="multilabel")(logits, target)
    assert loss.item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)
    binary = FocalLoss(2.0, alpha=a, mode="binary")(torch.tensor([[1.0]]), torch.tensor([1]))
    assert binary.item() == pytest.approx(by_hand[0], rel=1e-6)


def test_focal_with_gamma_zero_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 5, generator=g, requires_grad=True)
    target = torch.randint(0, 5, (32,), generator=g)
    weight = torch.rand(5, generator=g) + 0.5
    for w in (None, weight):
        focal = FocalLoss(0.0, weight=w)(logits, target)
        ce = F.cross_entropy(logits, target, weight=w)
        torch.testing.assert_close(focal, ce)
        g_focal = torch.autograd.grad(focal, logits)[0]
        g_ce = torch.autograd.grad(ce, logits)[0]
        torch.testing.assert_close(g_focal, g_ce)
    multi_target = torch.randint(0, 2, (32, 5), generator=g).float()
    torch.testing.assert_close(
        FocalLoss(0.0, mode="multilabel")(logits, multi_target),
        F.binary_cross_entropy_with_logits(logits, multi_target),
    )


def test_focal_gradient_stays_finite_when_saturated():
    logits = torch.tensor([[80.0, -80.0]], requires_grad=True)
    for gamma in (0.0, 0.5, 2.0):
        FocalLoss(gamma)(logits, torch.tensor([0])).backward()
        assert torch.isfinite(logits.grad).all()
        logits.grad = None


def test_bce_ignores_nan_targets_and_weights_columns():
    logits = torch.tensor([[0.3, -1.0, 2.0], [1.5, 0.2, -0.7]])
    target = torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, float("nan")]])
    valid = ~torch.isnan(target)
    raw = F.binary_cross_entropy_with_logits(logits, target.nan_to_num(), reduction="none")
    loss = MaskedBCEWithLogitsLoss()(logits, target)
    assert loss.item() == pytest.approx(raw[valid].mean().item(), rel=1e-6)
    weight = torch.tensor([2.0, 1.0, 0.5])
    weighted = MaskedBCEWithLogitsLoss(weight=weight)(logits, target)
    assert weighted.item() == pytest.approx((raw * weight)[valid].mean().item(), rel=1e-6)
    smooth = MaskedBCEWithLogitsLoss(label_smoothing=0.2)(logits[:1, :1], target[:1, :1])
    expected = F.binary_cross_entropy_with_logits(logits[:1, :1], torch.tensor([[0.9]]))
    assert smooth.item() == pytest.approx(expected.item(), rel=1e-6)
    focal = FocalLoss(0.0, mode="multilabel")(logits, target)
    assert focal.item() == pytest.approx(loss.item(), rel=1e-6)


def test_mse_reshapes_targets():
    out = torch.tensor([[1.0], [3.0]])
    assert RegressionMSELoss()(out, torch.tensor([0.0, 1.0])).item() == pytest.approx(2.5)
