from __future__ import annotations

import json

import pytest

from medlens.engine import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    load_config,
    parse_train_args,
    save_config,
)
from medlens.errors import MedlensError


def test_dict_and_json_round_trip(tmp_path):
    config = TrainConfig(
        epochs=3, class_weights=(1.0, 2.5), betas=(0.8, 0.99), ema_decay=0.9, grad_clip=None
    )
    data = config.to_dict()
    assert data["class_weights"] == [1.0, 2.5]  # JSON-able lists
    json.dumps(data)
    assert TrainConfig.from_dict(data) == config
    save_config(config, tmp_path / "config.json")
    loaded = load_config(tmp_path / "config.json")
    assert loaded == config
    assert loaded.betas == (0.8, 0.99) and isinstance(loaded.class_weights, tuple)


def test_overrides_are_typed_from_annotations():
    base = TrainConfig()
    config = apply_overrides(
        base,
        [
            "lr=0.01",
            "epochs=5",
            "nesterov=yes",
            "progress=off",
            "optimizer=sgd",
            "ema_decay=0.99",
            "grad_clip=none",
            "class_weights=1,2,3",
            "betas=[0.8, 0.9]",
            "--warmup-epochs=0.5",
            "monitor=val_accuracy",
        ],
    )
    assert config.lr == 0.01 and config.epochs == 5 and type(config.epochs) is int
    assert config.nesterov is True and config.progress is False
    assert config.optimizer == "sgd" and config.ema_decay == 0.99 and config.grad_clip is None
    assert config.class_weights == (1.0, 2.0, 3.0) and config.betas == (0.8, 0.9)
    assert config.warmup_epochs == 0.5 and config.monitor == "val_accuracy"
    assert base == TrainConfig()  # the original is untouched
    assert apply_overrides(config, ["class_weights=null"]).class_weights is None
    assert apply_overrides(config, ["lr=1"]).lr == 1.0 and type(config.lr) is float


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimzer=sgd", "unknown configuration key 'optimzer' (did you mean 'optimizer'?)"),
        ("epochs=1.5", "epochs='1.5': expected int"),
        ("lr=fast", "lr='fast': expected float"),
        ("nesterov=maybe", "expected true or false"),
        ("optimizer=rmsprop", "expected one of sgd, adam, adamw"),
        ("betas=0.9", "expected 2 values"),
        ("betas=[0.9", "not a JSON list"),
        ("lr=-1", "lr=-1.0: must be positive"),
        ("ema_decay=1", "ema_decay=1.0: must be in [0, 1)"),
        ("epochs=none", "epochs='none': expected int"),
        ("lr", "not of the form key=value"),
    ],
)
def test_bad_overrides_fail_clearly(override, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(TrainConfig(), [override])
    assert message in str(info.value)
    assert isinstance(info.value, MedlensError)


def test_from_dict_and_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown configuration key"):
        TrainConfig.from_dict({"epochs": 2, "colour": "red"})
    with pytest.raises(ConfigError, match="expected int"):
        TrainConfig.from_dict({"epochs": "2"})
    with pytest.raises(ConfigError, match="expected one of"):
        TrainConfig(schedule="linear")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value).startswith(f"{bad}: not valid JSON")
    bad.write_text('{"epochs": 0}')
    with pytest.raises(ConfigError, match=r"bad.json: epochs=0: must be at least 1"):
        load_config(bad)


def test_parse_train_args(tmp_path):
    save_config(TrainConfig(epochs=7, lr=0.5), tmp_path / "c.json")
    argv = ["--config", str(tmp_path / "c.json"), "--output", "run", "--resume", "lr=0.1"]
    config, args = parse_train_args(argv)
    assert config.epochs == 7 and config.lr == 0.1
    assert args.resume is True and str(args.output) == "run"
    config, args = parse_train_args(["batch_size=4"], defaults=TrainConfig(epochs=2))
    assert (config.epochs, config.batch_size, args.resume, args.output) == (2, 4, False, None)


def test_differences_lists_changed_fields():
    a = TrainConfig()
    b = a.replace(lr=0.5, epochs=20)
    assert a.differences(b) == ["epochs: 10 -> 20", "lr: 0.001 -> 0.5"]
    assert a.differences(b, ignore={"epochs"}) == ["lr: 0.001 -> 0.5"]
