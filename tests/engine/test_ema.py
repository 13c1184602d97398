from __future__ import annotations

import pytest
import torch
from torch import nn

from medlens.engine import ModelEMA, TrainConfig, Trainer

from .conftest import mlp


def test_ema_by_hand():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEMA(model, decay=0.9)
    for target, expected in [(1.0, 0.1), (1.0, 0.19), (-1.0, 0.9 * 0.19 - 0.1)]:
        with torch.no_grad():
            model.weight.fill_(target)
        ema.update(model)
        assert ema.module.weight.item() == pytest.approx(expected, abs=1e-7)
    assert ema.num_updates == 3
    assert not ema.module.weight.requires_grad and not ema.module.training
    assert model.weight.item() == -1.0  # the model itself is untouched


def test_ema_averages_float_buffers_and_copies_counters():
    model = nn.BatchNorm1d(2)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.running_mean.fill_(4.0)
    model.num_batches_tracked.fill_(7)
    ema.update(model)
    assert ema.module.running_mean.tolist() == [2.0, 2.0]
    assert ema.module.num_batches_tracked.item() == 7


def test_ema_state_round_trip_and_decay_zero():
    model = mlp()
    ema = ModelEMA(model, decay=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for a, b in zip(ema.module.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    other = ModelEMA(mlp(seed=5), decay=0.0)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1
    assert torch.equal(other.module[0].weight, ema.module[0].weight)
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, 1.0)


def test_trainer_validates_the_ema_weights(toy):
    seen = []

    def evaluate(model, data):
        seen.append(model)
        return {"score": 1.0}

    model = mlp()
    config = TrainConfig(epochs=2, batch_size=32, ema_decay=0.9, progress=False)
    trainer = Trainer(model, config, toy[0], toy[1], evaluate_fn=evaluate)
    trainer.fit()
    assert seen == [trainer.ema.module, trainer.ema.module]
    assert trainer.ema.num_updates == trainer.global_step == 6
    assert not torch.equal(trainer.ema.module[0].weight, model[0].weight)
