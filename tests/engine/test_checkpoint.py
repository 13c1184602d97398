from __future__ import annotations

import pytest
import torch

from medlens.engine import (
    CheckpointError,
    TrainConfig,
    Trainer,
    get_rng_state,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    set_rng_state,
)

from .conftest import mlp


def test_round_trip_of_plain_values(tmp_path):
    state = {
        "w": torch.arange(3.0),
        "n": 3,
        "x": 0.5,
        "s": "a",
        "b": True,
        "none": None,
        "nested": {"l": [1, (2, 3)], 0: torch.zeros(2, dtype=torch.uint8)},
    }
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    assert loaded["n"] == 3 and loaded["nested"]["l"] == [1, (2, 3)]
    assert torch.equal(loaded["w"], state["w"])
    assert load_checkpoint(tmp_path / "c.pt")["s"] == "a"


def test_refuses_values_weights_only_would_reject(tmp_path):
    with pytest.raises(TypeError, match=r"state\['cfg'\]: TrainConfig"):
        save_checkpoint(tmp_path / "c.pt", {"cfg": TrainConfig()})
    assert not (tmp_path / "c.pt").exists()


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    import builtins

    from medlens import _atomic

    def crash(file, mode="r", *args, **kwargs):
        with builtins.open(file, mode, *args, **kwargs) as handle:
            handle.write(b"PK\x03\x04 half")  # a half-written file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(_atomic, "open", crash, raising=False)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2, "big": torch.zeros(1000)})
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    assert str(info.value).startswith(f"{bad}: cannot read checkpoint")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_rng_state_round_trip():
    state = get_rng_state()
    assert state["torch"].dtype == torch.uint8
    a = torch.rand(3)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), a)


def test_trainer_checkpoints_load_with_weights_only(tmp_path, toy):
    config = TrainConfig(
        epochs=2, batch_size=32, optimizer="adam", ema_decay=0.5, grad_clip=1.0, progress=False
    )
    model = mlp()
    Trainer(model, config, *toy, output_dir=tmp_path).fit()
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / name, weights_only=True)
        assert state["epoch"] in (1, 2) and set(state["optimizers"]) == {"model"}
        assert state["rng"][0]["torch"].dtype == torch.uint8
        assert TrainConfig.from_dict(state["config"]) == config
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 6 and len(last["history"]) == 2
    assert all(torch.equal(last["model"][k], v) for k, v in model.state_dict().items())
    fresh = load_weights(mlp(seed=9), tmp_path / "last.pt")
    assert torch.equal(fresh[0].weight, last["ema"]["module"]["0.weight"])
    raw = load_weights(mlp(seed=9), tmp_path / "last.pt", ema=False)
    assert torch.equal(raw[0].weight, model[0].weight)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_weights(mlp(out=5), tmp_path / "last.pt")
