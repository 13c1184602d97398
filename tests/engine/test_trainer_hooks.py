"""The seams tasks build on: ``prepare`` (DDP, differential privacy), federated-round ``fit``
(starting weights, a budget of steps, repeated calls) and pluggable validation metrics."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import medlens.engine.distributed as D
from medlens.engine import (
    Callback,
    CheckpointError,
    ConfigError,
    TrainConfig,
    Trainer,
    batch_metrics_for,
    multiclass_accuracy,
    multilabel_accuracy,
    regression_mae,
)

from .conftest import blobs, mlp, without_time

FAST = {"batch_size": 32, "progress": False, "tensorboard": False}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- prepare
class Counting(nn.Module):
    """A wrapper sharing the model's parameters (as DDP and Opacus' GradSampleModule do)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.module(x)


class CountingOptimizer:
    """An optimiser wrapper sharing the built one's param_groups (as Opacus' DPOptimizer)."""

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.inner = inner
        self.steps = 0

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.steps += 1
        self.inner.step()

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


class CountingBatches:
    """Batches that count the passes made over them."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.passes = 0

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self):
        self.passes += 1
        return iter(self.inner)


class Wrapping(Trainer):
    """What a differential-privacy trainer does: replace the model, optimiser and data."""

    seen: list[dict]

    def prepare(self) -> None:
        if not hasattr(self, "seen"):
            self.seen = []
        self.seen.append(
            {
                "device": self.device,
                "model_is_train_model": self.train_model is self.model,
                "optimizer_state": len(self.optimizers["model"].state),
                "optimizer_id": id(self.optimizers["model"]),
                "scheduler": "model" in self.schedulers,
                "batches": len(self.train_batches),
                "steps_per_epoch": self.steps_per_epoch,
                "global_step": self.global_step,
                "history": len(self.history),
                "weights": snapshot(self.model),
            }
        )
        self.train_model = Counting(self.model)
        self.optimizers["model"] = CountingOptimizer(self.optimizers["model"])
        self.train_batches = CountingBatches(self.train_batches)


def test_prepare_runs_once_per_fit_and_its_replacements_train(tmp_path, toy):
    config = TrainConfig(**FAST, epochs=2, lr=0.02, schedule="constant")
    model = mlp()
    trainer = Wrapping(model, config, *toy, output_dir=tmp_path)
    history = trainer.fit()
    assert len(trainer.seen) == 1
    seen = trainer.seen[0]
    assert seen["device"] == torch.device("cpu") and seen["model_is_train_model"]
    assert seen["scheduler"] and seen["batches"] == seen["steps_per_epoch"] == 3
    assert seen["global_step"] == 0 and seen["history"] == 0 and seen["optimizer_state"] == 0
    # Every step went through the replacements, and training still worked.
    assert trainer.train_model.calls == 6 and trainer.optimizers["model"].steps == 6
    assert trainer.train_batches.passes == 2
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] >= 0.9
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # the wrapper's state_dict
    assert state["global_step"] == 6 and state["optimizers"]["model"]["state"]

    # Resume: prepare comes after the checkpoint is restored, once again.
    resumed = Wrapping(mlp(seed=5), config.replace(epochs=3), *toy, output_dir=tmp_path)
    resumed.fit(resume=True)
    assert len(resumed.seen) == 1
    assert resumed.seen[0]["global_step"] == 6 and resumed.seen[0]["history"] == 2
    assert resumed.seen[0]["optimizer_state"] > 0  # restored before prepare wraps it
    assert same(resumed.seen[0]["weights"], state["model"])
    assert resumed.train_model.calls == 3


def test_prepare_is_where_ddp_wraps(toy, monkeypatch):
    calls = []

    def fake_wrap(model, device, info):
        calls.append((model, device, info))
        return Counting(model)

    monkeypatch.setattr(D, "wrap_model", fake_wrap)
    model = mlp()
    trainer = Trainer(model, TrainConfig(**FAST, epochs=1), *toy)
    trainer.fit()
    assert len(calls) == 1 and calls[0][0] is model and calls[0][1] == torch.device("cpu")
    assert isinstance(trainer.train_model, Counting) and trainer.train_model.calls == 3
    monkeypatch.undo()
    plain = Trainer(mlp(), TrainConfig(**FAST, epochs=1), *toy)
    plain.fit()
    assert plain.train_model is plain.model  # one process: not wrapped


# ---------------------------------------------------------------------- federated rounds
class Steps(Callback):
    """Per fit: steps taken, each step's loss, the weights and first batch at the start."""

    def __init__(self) -> None:
        self.rounds: list[dict] = []

    def on_fit_start(self, trainer) -> None:
        ema = None if trainer.ema is None else snapshot(trainer.ema.module)
        self.rounds.append({"steps": 0, "losses": [], "start": snapshot(trainer.model),
                            "ema": ema})  # fmt: skip

    def on_batch_end(self, trainer, index, outputs) -> None:
        self.rounds[-1]["steps"] += 1
        self.rounds[-1]["losses"].append(float(outputs["loss"]))


class FirstBatch(Trainer):
    """Remembers each fit's first training batch (to see the data order change)."""

    def train_step(self, batch):
        if self.global_step == 0:
            self.first_batches = [*getattr(self, "first_batches", []), batch[1].clone()]
        return super().train_step(batch)


def test_two_rounds_from_given_weights_take_exactly_max_steps(tmp_path, toy):
    # 96 samples / 32: 3 steps per epoch, so 5 steps end inside epoch 2.
    config = TrainConfig(**FAST, epochs=10, lr=0.02, schedule="constant", val_every=10,
                         ema_decay=0.9)  # fmt: skip
    counter = Steps()
    model = mlp()
    trainer = FirstBatch(model, config, *toy, output_dir=tmp_path, hooks=[counter])
    server = snapshot(mlp(seed=1))

    first = trainer.fit(initial_weights=server, max_steps=5)
    assert counter.rounds[0]["steps"] == 5 and trainer.global_step == 5
    assert same(counter.rounds[0]["start"], server) and same(counter.rounds[0]["ema"], server)
    assert [r["epoch"] for r in first] == [1, 2]  # the partial epoch is recorded
    assert "val_loss" not in first[0] and "val_accuracy" in first[1]  # validated at the end
    assert first[1]["train_loss"] == pytest.approx(sum(counter.rounds[0]["losses"][3:]) / 2)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["global_step"] == 5 and state["epoch"] == 2
    assert same(state["model"], snapshot(model)) and not same(state["model"], server)
    assert all(torch.equal(v, server[k]) for k, v in mlp(seed=1).state_dict().items())

    # Round 2 on the same trainer and folder, from other weights.
    server2 = {k: v + 0.01 for k, v in snapshot(model).items()}
    second = trainer.fit(initial_weights=server2, max_steps=5)
    assert counter.rounds[1]["steps"] == 5 and trainer.global_step == 5
    assert same(counter.rounds[1]["start"], server2)
    assert [r["epoch"] for r in second] == [1, 2] and second is trainer.history
    assert not torch.equal(trainer.first_batches[0], trainer.first_batches[1])  # new order
    assert torch.load(tmp_path / "last.pt", weights_only=True)["global_step"] == 5
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == second


def test_initial_weights_from_files(tmp_path, toy):
    config = TrainConfig(**FAST, epochs=1)
    source = mlp(seed=3)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    Trainer(mlp(seed=4), config, *toy, output_dir=tmp_path / "run").fit()
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    for path, expected in [(tmp_path / "weights.pt", snapshot(source)),
                           (str(tmp_path / "run" / "last.pt"), trained)]:  # fmt: skip
        counter = Steps()
        Trainer(mlp(), config, toy[0], hooks=[counter]).fit(initial_weights=path, max_steps=1)
        assert same(counter.rounds[0]["start"], expected)


def test_initial_weights_and_budget_refusals(tmp_path, toy):
    config = TrainConfig(**FAST, epochs=2)
    model = mlp()
    before = snapshot(model)
    trainer = Trainer(model, config, *toy, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="not with resume"):
        trainer.fit(resume=True, initial_weights=before)
    wrong = {**before, "0.weight": torch.zeros(16, 5)}
    wrong.pop("2.bias")
    with pytest.raises(CheckpointError, match=r"missing: 2\.bias; other shapes: 0\.weight"):
        trainer.fit(initial_weights=wrong)
    assert same(snapshot(model), before)  # nothing copied
    with pytest.raises(ConfigError, match="a state dict or a path"):
        trainer.fit(initial_weights=[1, 2])
    for bad in (0, -3, True):
        with pytest.raises(ConfigError, match="positive number of steps"):
            trainer.fit(max_steps=bad)
    with pytest.raises(ConfigError, match=r"max_steps=7: more than epochs=2 x 3 batches"):
        trainer.fit(max_steps=7)
    assert trainer.fit(max_steps=6)[-1]["epoch"] == 2  # exactly the run's length is fine


def test_a_budget_at_an_epoch_end_changes_nothing(toy):
    config = TrainConfig(**FAST, epochs=3, lr=0.02)
    a, b = mlp(), mlp()
    plain = Trainer(a, config, *toy).fit()
    budget = Trainer(b, config, *toy).fit(max_steps=9)
    assert without_time(plain) == without_time(budget) and same(snapshot(a), snapshot(b))


def test_resume_continues_to_the_budget(tmp_path, toy):
    config = TrainConfig(**FAST, epochs=4, lr=0.02)
    done = Trainer(mlp(), config, *toy, output_dir=tmp_path).fit(max_steps=5)
    again = Trainer(mlp(), config, *toy, output_dir=tmp_path)
    assert without_time(again.fit(resume=True, max_steps=5)) == without_time(done)
    assert again.global_step == 5  # nothing more to do
    more = Trainer(mlp(), config, *toy, output_dir=tmp_path)
    history = more.fit(resume=True, max_steps=7)
    assert more.global_step == 7 and [r["epoch"] for r in history] == [1, 2, 3]  # 2 counts done


def test_a_checkpoint_from_before_data_epoch_offset_resumes(tmp_path, toy):
    config = TrainConfig(**FAST, epochs=2)
    Trainer(mlp(), config, *toy, output_dir=tmp_path).fit()
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["data_epoch_offset"]
    torch.save(state, tmp_path / "last.pt")
    resumed = Trainer(mlp(), config.replace(epochs=3), *toy, output_dir=tmp_path)
    assert len(resumed.fit(resume=True)) == 3 and resumed.data_epoch_offset == 0


def test_another_runs_folder_is_still_refused(tmp_path, toy):
    config = TrainConfig(**FAST, epochs=1)
    Trainer(mlp(), config, *toy, output_dir=tmp_path).fit()
    with pytest.raises(CheckpointError, match="holds a run already"):
        Trainer(mlp(), config, *toy, output_dir=tmp_path).fit(max_steps=1)


# ---------------------------------------------------------------------- validation metrics
def test_custom_batch_metrics_are_logged_as_val_names(toy):
    (x, y), _ = toy

    def metrics(outputs, targets):
        top2 = (outputs.topk(2, dim=1).indices == targets[:, None]).any(1).float().mean()
        return {"top2": top2, "mean_logit": outputs.mean(1).mean().item()}

    model = mlp()
    config = TrainConfig(**FAST, epochs=1, eval_batch_size=7, monitor="val_top2",
                         monitor_mode="max")  # fmt: skip
    trainer = Trainer(model, config, (x, y), (x, y), batch_metrics=metrics)
    record = trainer.fit()[0]
    assert {k for k in record if k.startswith("val_")} == {"val_loss", "val_top2", "val_mean_logit"}
    with torch.no_grad():
        out = model(x)
    top2 = (out.topk(2, dim=1).indices == y[:, None]).any(1).float().mean().item()
    assert record["val_top2"] == pytest.approx(top2)
    assert record["val_mean_logit"] == pytest.approx(out.mean().item(), abs=1e-6)  # weighted
    assert trainer.tracker.best == pytest.approx(top2)


def test_batch_metrics_refusals(toy):
    with pytest.raises(ConfigError, match="not with evaluate_fn"):
        Trainer(mlp(), None, *toy, evaluate_fn=lambda m, d: {}, batch_metrics=lambda o, t: {})
    trainer = Trainer(mlp(), TrainConfig(**FAST, epochs=1), *toy,
                      batch_metrics=lambda o, t: {"loss": o.sum()})  # fmt: skip
    with pytest.raises(ConfigError, match="must not return 'loss'"):
        trainer.fit()


def test_default_metrics_follow_task_and_loss():
    cases = [
        (None, TrainConfig(), multiclass_accuracy),
        ("classification", TrainConfig(loss="focal"), multiclass_accuracy),
        ("multilabel", TrainConfig(), multilabel_accuracy),
        ("multilabel", TrainConfig(loss="focal"), multilabel_accuracy),
        ("classification", TrainConfig(loss="bce"), multilabel_accuracy),
        ("regression", TrainConfig(), regression_mae),
        ("regression", TrainConfig(loss="ce"), regression_mae),
        ("classification", TrainConfig(loss="mse"), regression_mae),
    ]
    for task, config, expected in cases:
        assert Trainer(mlp(), config, task=task).batch_metrics is expected, (task, config.loss)
    assert batch_metrics_for("binary", "ce") is multiclass_accuracy


def test_default_metrics_values_unchanged():
    x, y = blobs(40)
    logits = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    assert multiclass_accuracy(logits, y)["accuracy"] == (logits.argmax(1) == y).float().mean()
    assert multiclass_accuracy(logits[:, :1], y) == {}  # one column: no accuracy
    labels = torch.nn.functional.one_hot(y, 3).float()
    labels[0, 1] = labels[3, 2] = float("nan")
    hits = ((logits > 0) == (labels > 0.5)).float()
    valid = ~torch.isnan(labels)
    expected = hits[valid].mean()
    assert multilabel_accuracy(logits, labels)["accuracy"] == pytest.approx(expected.item())
    target = x[:, 0]
    mae = regression_mae(logits[:, :1], target)["mae"]
    assert mae == pytest.approx((logits[:, 0] - target).abs().mean().item())


def test_default_validation_keys_by_task():
    x, y = blobs(64)
    onehot = torch.nn.functional.one_hot(y, 3).float()
    for task, target, out, key in [("multilabel", onehot, 3, "val_accuracy"),
                                   ("regression", x[:, 0], 1, "val_mae")]:  # fmt: skip
        model = mlp(out=out)
        config = TrainConfig(**FAST, epochs=1, eval_batch_size=64)
        record = Trainer(model, config, (x, target), (x, target), task=task).fit()[0]
        assert {k for k in record if k.startswith("val_")} == {"val_loss", key}
        with torch.no_grad():
            outputs = model(x)
        expected = (multilabel_accuracy if out == 3 else regression_mae)(outputs, target)
        assert record[key] == pytest.approx(float(next(iter(expected.values()))), rel=1e-6)
