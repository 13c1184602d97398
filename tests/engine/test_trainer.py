from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from medlens.engine import (
    Callback,
    CheckpointError,
    ConfigError,
    ProgressBar,
    TrainConfig,
    Trainer,
    build_optimizer,
    build_scheduler,
    load_config,
    seed_everything,
)

from .conftest import blobs, mlp

FAST = {"batch_size": 32, "progress": False, "tensorboard": False}


def fit(model, data, val=None, **changes):
    config = TrainConfig(**{**FAST, **changes})
    return Trainer(model, config, data, val).fit()


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("schedule", ["cosine", "step", "onecycle", "constant"])
def test_every_optimizer_and_schedule_trains_down(toy, optimizer, schedule):
    lr = 0.1 if optimizer == "sgd" else 0.02
    history = fit(
        mlp(),
        *toy,
        epochs=8,
        optimizer=optimizer,
        schedule=schedule,
        lr=lr,
        warmup_epochs=1,
        step_size=4,
        gamma=0.5,
    )
    assert history[-1]["train_loss"] < 0.3 * history[0]["train_loss"]
    assert history[-1]["val_accuracy"] >= 0.9


def test_each_loss_trains_down():
    x, y = blobs(96)
    onehot = torch.nn.functional.one_hot(y, 3).float()
    cases = [
        ({"loss": "ce", "label_smoothing": 0.1, "class_weights": (1.0, 2.0, 1.0)}, y, None),
        ({"loss": "focal", "focal_gamma": 2.0}, y, None),
        ({}, onehot, "multilabel"),  # auto: BCE
        ({"loss": "focal", "focal_alpha": 0.5}, onehot, "multilabel"),
        ({}, x[:, :1] * 2 - x[:, 1:2], "regression"),  # auto: MSE
    ]
    for changes, target, task in cases:
        model = mlp(out=1 if task == "regression" else 3)
        config = TrainConfig(**FAST, epochs=10, lr=0.02, **changes)
        history = Trainer(model, config, (x, target), (x, target), task=task).fit()
        assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"], changes
        metric = "val_mae" if task == "regression" else "val_accuracy"
        assert metric in history[-1]


def test_history_jsonl_and_run_folder(tmp_path, toy):
    config = TrainConfig(**FAST, epochs=3, warmup_epochs=1, lr=0.01)
    history = Trainer(mlp(), config, *toy, output_dir=tmp_path).fit()
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records == history and [r["epoch"] for r in records] == [1, 2, 3]
    assert set(records[0]) == {"epoch", "train_loss", "lr", "val_loss", "val_accuracy", "time"}
    assert records[0]["lr"] == pytest.approx(0.01)  # last warm-up step runs at the full rate
    assert all(isinstance(r["train_loss"], float) and r["time"] >= 0 for r in records)
    assert load_config(tmp_path / "config.json") == config
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json",
        "history.jsonl",
        "last.pt",
        "best.pt",
    }


def test_validation_metrics_are_sample_weighted(toy):
    (x, y), _ = toy
    model = mlp()
    trainer = Trainer(model, TrainConfig(**FAST, epochs=1, eval_batch_size=7), (x, y), (x, y))
    record = trainer.fit()[0]
    with torch.no_grad():
        out = model(x)
    assert record["val_loss"] == pytest.approx(nn.functional.cross_entropy(out, y).item(), 1e-5)
    assert record["val_accuracy"] == pytest.approx((out.argmax(1) == y).float().mean().item())


def scripted(values):
    """An evaluate_fn returning the given metric values, one per epoch."""
    it = iter(values)
    return lambda model, data: {"score": next(it)}


@pytest.mark.parametrize(
    ("mode", "values", "patience", "stop_epoch", "best_epoch"),
    [
        ("max", [0.1, 0.5, 0.4, 0.45, 0.3, 0.9, 1.0], 3, 5, 2),
        ("min", [5.0, 4.0, 3.0, 3.5, 2.9, 3.0], 1, 4, 3),
        ("max", [0.1, 0.2, 0.3, 0.4], 2, 4, 4),  # never runs out of patience
    ],
)
def test_early_stopping_stops_at_the_right_epoch(
    tmp_path, toy, mode, values, patience, stop_epoch, best_epoch
):
    config = TrainConfig(
        **FAST,
        epochs=len(values),
        monitor="val_score",
        monitor_mode=mode,
        early_stopping_patience=patience,
    )
    trainer = Trainer(mlp(), config, toy[0], evaluate_fn=scripted(values), output_dir=tmp_path)
    history = trainer.fit()
    assert [r["epoch"] for r in history][-1] == stop_epoch
    assert trainer.tracker.best_epoch == best_epoch
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == best_epoch
    if stop_epoch < len(values):
        assert torch.load(tmp_path / "last.pt", weights_only=True)["stopped"] is True
        # Resuming a finished (early-stopped) run trains nothing more.
        again = Trainer(mlp(), config, toy[0], evaluate_fn=scripted([]), output_dir=tmp_path)
        assert again.fit(resume=True) == history


def test_min_delta_and_missing_monitor(toy):
    config = TrainConfig(
        **FAST,
        epochs=5,
        monitor="val_score",
        monitor_mode="max",
        early_stopping_patience=2,
        early_stopping_min_delta=0.1,
    )
    history = Trainer(mlp(), config, toy[0], evaluate_fn=scripted([1, 1.05, 1.08, 2])).fit()
    assert len(history) == 3  # +0.05 and +0.08 are not improvements beyond min_delta
    config = TrainConfig(**FAST, epochs=2, monitor="val_auc", early_stopping_patience=1)
    with pytest.raises(ConfigError, match=r"monitor='val_auc': not among the metrics"):
        Trainer(mlp(), config, *toy).fit()
    # Without early stopping a missing monitor only means no best checkpoint.
    assert len(Trainer(mlp(), config.replace(early_stopping_patience=None), toy[0]).fit()) == 2


def test_validation_every_few_epochs_and_always_after_the_last(tmp_path, toy):
    config = TrainConfig(**FAST, epochs=7, monitor="val_score", monitor_mode="max", val_every=3,
                         early_stopping_patience=5)  # fmt: skip
    trainer = Trainer(mlp(), config, toy[0], evaluate_fn=scripted([0.5, 0.9, 0.7]),
                      output_dir=tmp_path)  # fmt: skip
    history = trainer.fit()
    assert [r["epoch"] for r in history if "val_score" in r] == [3, 6, 7]
    assert [r["val_score"] for r in history if "val_score" in r] == [0.5, 0.9, 0.7]
    assert trainer.tracker.best_epoch == 6 and trainer.tracker.bad_epochs == 1
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 6
    with pytest.raises(ConfigError, match="val_every"):
        TrainConfig(val_every=0)


def test_same_seed_gives_identical_weights(toy):
    def run(seed):
        seed_everything(seed)
        model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        config = TrainConfig(**FAST, epochs=2, seed=seed, deterministic=True, ema_decay=0.9)
        Trainer(model, config, *toy).fit()
        return [p.detach().clone() for p in model.parameters()]

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))
    assert not torch.are_deterministic_algorithms_enabled()  # restored after fit


class DtypeProbe(Callback):
    def __init__(self, model):
        self.dtypes = set()
        model.register_forward_hook(lambda m, i, o: self.dtypes.add(o.dtype))


@pytest.mark.parametrize(
    ("amp", "dtype"), [("off", torch.float32), ("on", torch.bfloat16), ("auto", torch.float32)]
)
def test_amp_modes_run_on_the_cpu(toy, amp, dtype):
    model = mlp()
    probe = DtypeProbe(model[0])
    config = TrainConfig(**FAST, epochs=3, amp=amp, lr=0.02)
    trainer = Trainer(model, config, *toy, hooks=[probe])
    history = trainer.fit()
    assert probe.dtypes == {dtype}
    assert not trainer.scaler.is_enabled()  # no loss scaling needed for bf16 or fp32
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert model[0].weight.dtype == torch.float32


def test_gradient_clipping_bounds_the_norm(toy):
    norms = []

    class Norm(Callback):
        def on_batch_end(self, trainer, index, outputs):
            grads = [p.grad for p in trainer.model.parameters()]
            norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    Trainer(mlp(), TrainConfig(**FAST, epochs=2, grad_clip=0.05), toy[0], hooks=[Norm()]).fit()
    assert len(norms) == 6 and max(norms) <= 0.05 + 1e-6
    norms.clear()
    Trainer(mlp(), TrainConfig(**FAST, epochs=1), toy[0], hooks=[Norm()]).fit()
    assert max(norms) > 0.05  # the clip is what kept them small


def test_hooks_are_called_in_order_and_can_stop(toy):
    events = []

    class Recorder(Callback):
        def on_fit_start(self, trainer):
            events.append("fit_start")

        def on_epoch_start(self, trainer, epoch):
            events.append(f"epoch_start {epoch}")

        def on_batch_end(self, trainer, index, outputs):
            assert set(outputs) == {"loss"} and outputs["loss"].ndim == 0
            events.append(f"batch {index}")

        def on_epoch_end(self, trainer, epoch, record):
            events.append(f"epoch_end {record['epoch']}")
            trainer.should_stop = epoch == 2

        def on_fit_end(self, trainer):
            events.append("fit_end")

    history = Trainer(
        mlp(), TrainConfig(**{**FAST, "batch_size": 48}, epochs=5), toy[0], hooks=[Recorder()]
    ).fit()
    assert len(history) == 2
    assert events == [
        "fit_start",
        "epoch_start 1",
        "batch 0",
        "batch 1",
        "epoch_end 1",
        "epoch_start 2",
        "batch 0",
        "batch 1",
        "epoch_end 2",
        "fit_end",
    ]


class TwoOptimizers(Trainer):
    """A GAN-shaped trainer: two networks, two optimisers, one overridden step."""

    def configure_optimizers(self):
        first = build_optimizer(self.model[0].parameters(), self.config)
        second = build_optimizer(self.model[2].parameters(), self.config.replace(lr=0.001))
        return (
            {"first": first, "second": second},
            {"first": build_scheduler(first, self.config, self.steps_per_epoch)},
        )

    def train_step(self, batch):
        x, y = batch
        with self.autocast():
            loss = self.loss_fn(self.train_model(x), y)
        self.backward_step(loss, "first")
        with self.autocast():
            loss2 = self.loss_fn(self.train_model(x), y)
        self.backward_step(loss2, "second")
        return {"loss": loss.detach(), "second_loss": loss2.detach()}


def test_a_subclass_drives_two_optimisers_and_resumes(tmp_path, toy):
    config = TrainConfig(**FAST, epochs=3, lr=0.02)
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    history = TwoOptimizers(model, config, *toy, output_dir=tmp_path).fit()
    assert {"lr_first", "lr_second"} <= set(history[0]) and "lr" not in history[0]
    assert history[0]["lr_second"] == 0.001
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(state["optimizers"]) == {"first", "second"} and set(state["schedulers"]) == {"first"}
    longer = TwoOptimizers(mlp(), config.replace(epochs=4), *toy, output_dir=tmp_path)
    assert len(longer.fit(resume=True)) == 4
    with pytest.raises(CheckpointError, match="optimisers"):
        Trainer(mlp(), config.replace(epochs=5), *toy, output_dir=tmp_path).fit(resume=True)


def test_run_folder_guards(tmp_path, toy):
    config = TrainConfig(**FAST, epochs=2)
    Trainer(mlp(), config, *toy, output_dir=tmp_path).fit()
    with pytest.raises(CheckpointError, match="holds a run already"):
        Trainer(mlp(), config, *toy, output_dir=tmp_path).fit()
    with pytest.raises(CheckpointError, match=r"lr: 0\.001 -> 0\.5"):
        Trainer(mlp(), config.replace(lr=0.5), *toy, output_dir=tmp_path).fit(resume=True)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        Trainer(mlp(), config, *toy, output_dir=tmp_path / "new").fit(resume=True)
    longer = Trainer(mlp(), config.replace(epochs=3, progress=True), *toy, output_dir=tmp_path)
    assert [r["epoch"] for r in longer.fit(resume=True)] == [1, 2, 3]
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 3


def test_tensorboard_scalars_when_installed(tmp_path, toy, monkeypatch):
    logged = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            logged.append(("open", log_dir, purge_step))

        def add_scalar(self, key, value, step):
            logged.append((key, step))

        def flush(self):
            pass

        def close(self):
            logged.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    config = TrainConfig(batch_size=32, progress=False, epochs=2)
    Trainer(mlp(), config, *toy, output_dir=tmp_path).fit()
    assert logged[0] == ("open", str(tmp_path / "tensorboard"), None)
    assert ("train_loss", 2) in logged and ("val_accuracy", 1) in logged and ("lr", 1) in logged
    assert ("epoch", 1) not in logged and logged[-1] == ("close",)
    logged.clear()
    Trainer(mlp(), config.replace(epochs=3), *toy, output_dir=tmp_path).fit(resume=True)
    assert logged[0][2] == 3  # events after the resumed checkpoint are purged


def test_tensorboard_absent_is_not_an_error(tmp_path, toy, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    Trainer(mlp(), TrainConfig(batch_size=32, epochs=1), *toy, output_dir=tmp_path).fit()
    assert not (tmp_path / "tensorboard").exists()


def test_progress_bar_runs(toy, capsys):
    bar = ProgressBar(refresh=0.0, force=True)
    Trainer(mlp(), TrainConfig(**FAST, epochs=2), *toy, hooks=[bar]).fit()
    assert "loss" in capsys.readouterr().err and bar.progress is None


class TinyMedMNIST:
    """The parts of a MedMNIST split the trainer uses: uint8 (N, H, W) images, labels, task."""

    task = "classification"
    channels = 1
    spatial_dims = 2

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.labels = np.arange(n) % 2
        self.images = rng.integers(0, 100, (n, 8, 8), dtype=np.uint8)
        self.images[self.labels == 1, 2:6, 2:6] += 150  # a bright square marks class 1
        self.images.flags.writeable = False

    def arrays(self):
        return self.images, self.labels

    def __len__(self):
        return len(self.labels)


def test_image_dataset_served_from_memory_with_a_conv_net():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    trainer = Trainer(
        model, TrainConfig(**FAST, epochs=6, lr=0.02), TinyMedMNIST(128, 0), TinyMedMNIST(64, 1)
    )
    history = trainer.fit()
    assert trainer.task == "classification" and trainer.steps_per_epoch == 4
    assert history[-1]["val_accuracy"] > 0.9


@pytest.mark.realdata
def test_breastmnist_one_epoch(real):
    from medlens.data import MedMNISTDataset

    path = real("medmnist", "breastmnist.npz")
    train, val = MedMNISTDataset(path, "train"), MedMNISTDataset(path, "val")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    history = Trainer(model, TrainConfig(**FAST, epochs=2, lr=0.01), train, val).fit()
    assert len(history) == 2 and 0 <= history[-1]["val_accuracy"] <= 1
