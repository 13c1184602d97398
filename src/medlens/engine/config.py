"""Training configuration: one typed dataclass, JSON round-trip and ``key=value`` overrides.

The field annotations are the single source of truth: command-line overrides and JSON files are
parsed and checked against them, so a typo (``lr=1e-3x``, ``optimzer=sgd``) fails before any
training starts, and the saved ``config.json`` is exactly what a resumed run must match.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Union

from medlens._atomic import atomic_write_text
from medlens._json import check_keys, did_you_mean, read_json
from medlens.errors import MedlensError

__all__ = [
    "RESUME_MUTABLE",
    "ConfigError",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "parse_train_args",
    "save_config",
]

#: Fields a resumed run may change: they do not alter what the finished run computes
#: (``epochs`` extends or shortens the run, the rest only affect speed and display).
RESUME_MUTABLE = frozenset({"epochs", "progress", "num_threads", "num_workers", "tensorboard"})


class ConfigError(MedlensError):
    """A configuration value, key or file is invalid."""


@dataclass
class TrainConfig:
    """Everything that decides a training run (the model and data aside).

    Schedules step per iteration; ``warmup_epochs`` may be fractional. ``ema_decay``,
    ``grad_clip``, ``early_stopping_patience`` and ``class_weights`` are off when ``None``.
    ``monitor`` names a key of the per-epoch record (``val_loss``, ``val_accuracy``,
    ``train_loss``, or ``val_<name>`` for a custom evaluation's ``<name>``). ``loss`` names the
    loss: the engine's built-in ones (``auto``, ``ce``, ``bce``, ``mse``, ``focal``; see
    :func:`~medlens.engine.build_loss`) or one a task defines (segmentation: ``dice_ce``), which
    that task checks and builds. ``batches_per_epoch`` is for data drawn at random (patches):
    how many batches make an epoch (``None``: one pass over the data). ``val_every``
    validates every so many epochs (and always after the last); early stopping's patience
    then counts validated epochs only.
    """

    epochs: int = 10
    batch_size: int = 128
    batches_per_epoch: int | None = None
    eval_batch_size: int | None = None
    drop_last: bool = False
    # optimiser
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    # learning-rate schedule
    schedule: Literal["cosine", "step", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    step_size: int = 30
    gamma: float = 0.1
    # loss
    loss: str = "auto"
    label_smoothing: float = 0.0
    class_weights: tuple[float, ...] | None = None
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    # step
    grad_clip: float | None = None
    amp: Literal["auto", "on", "off"] = "auto"
    ema_decay: float | None = None
    # early stopping and best checkpoint
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    monitor: str = "val_loss"
    monitor_mode: Literal["min", "max"] = "min"
    val_every: int = 1
    # reproducibility and runtime
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    num_threads: int | None = None
    num_workers: int = 0
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        hints = _hints()
        for f in fields(self):
            setattr(self, f.name, _coerce(getattr(self, f.name), hints[f.name], f.name))
        self._check()

    def _check(self) -> None:
        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r}: {why}")

        need(self.epochs >= 1, "epochs", "must be at least 1")
        need(self.batch_size >= 1, "batch_size", "must be at least 1")
        need(
            self.batches_per_epoch is None or self.batches_per_epoch >= 1,
            "batches_per_epoch",
            "must be at least 1",
        )
        need(bool(self.loss), "loss", "must name a loss")
        need(self.eval_batch_size is None or self.eval_batch_size >= 1, "eval_batch_size", ">= 1")
        need(self.lr > 0, "lr", "must be positive")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        need(all(0 <= b < 1 for b in self.betas), "betas", "each must be in [0, 1)")
        need(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        need(0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, lr]")
        need(self.step_size >= 1, "step_size", "must be at least 1 epoch")
        need(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        need(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        need(self.focal_gamma >= 0, "focal_gamma", "must be >= 0")
        need(self.focal_alpha is None or 0 <= self.focal_alpha <= 1, "focal_alpha", "in [0, 1]")
        need(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "must be positive")
        need(self.ema_decay is None or 0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        need(
            self.early_stopping_patience is None or self.early_stopping_patience >= 1,
            "early_stopping_patience",
            "must be at least 1",
        )
        need(self.early_stopping_min_delta >= 0, "early_stopping_min_delta", "must be >= 0")
        need(self.num_threads is None or self.num_threads >= 1, "num_threads", ">= 1")
        need(self.num_workers >= 0, "num_workers", "must be >= 0")
        need(bool(self.monitor), "monitor", "must name a metric")
        need(self.val_every >= 1, "val_every", "must be at least 1 epoch")

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from plain values, refusing unknown keys; missing keys take their defaults."""
        if not isinstance(data, dict):
            raise ConfigError(f"a configuration must be a mapping, got {type(data).__name__}")
        check_keys(data, [f.name for f in fields(cls)], what="configuration key", error=ConfigError)
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (checked like any other construction)."""
        return dataclasses.replace(self, **changes)

    def differences(self, other: TrainConfig, *, ignore: Iterable[str] = ()) -> list[str]:
        """``key: mine -> theirs`` for each differing field not in ``ignore``."""
        skip = set(ignore)
        mine, theirs = self.to_dict(), other.to_dict()
        changed = [k for k in mine if k not in skip and mine[k] != theirs[k]]
        return [f"{k}: {mine[k]!r} -> {theirs[k]!r}" for k in changed]


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write ``config`` as JSON, atomically."""
    atomic_write_text(path, config.to_json())


def load_config(path: str | Path) -> TrainConfig:
    """Read a JSON configuration written by :func:`save_config` (or by hand)."""
    path = Path(path)
    data = read_json(path, what="configuration", error=ConfigError)
    try:
        return TrainConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(exc.problem, path) from None


def apply_overrides(config: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """A copy of ``config`` with ``key=value`` strings applied, typed by the field annotations.

    Values: booleans ``true/false/yes/no/on/off/1/0``; ``none``/``null`` for optional fields;
    tuples as ``0.9,0.999`` or JSON ``[0.9, 0.999]``.
    """
    hints = _hints()
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        if key not in hints:
            raise ConfigError(f"unknown configuration key {key!r}{did_you_mean(key, hints)}")
        changes[key] = _parse(raw.strip(), hints[key], key)
    return dataclasses.replace(config, **changes)


def parse_train_args(
    argv: Sequence[str] | None = None, *, defaults: TrainConfig | None = None
) -> tuple[TrainConfig, argparse.Namespace]:
    """Parse ``[--config FILE] [--output DIR] [--resume] key=value ...`` for training scripts.

    The configuration is ``defaults`` (or the built-in defaults), then the file, then the
    overrides; the namespace carries ``output`` and ``resume``.
    """
    parser = argparse.ArgumentParser(description="Train with medlens.engine.")
    parser.add_argument("--config", type=Path, help="JSON configuration to start from")
    parser.add_argument("--output", type=Path, help="run folder (checkpoints, history)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="configuration changes")
    args = parser.parse_args(argv)
    config = load_config(args.config) if args.config else (defaults or TrainConfig())
    return apply_overrides(config, args.overrides), args


# ---------------------------------------------------------------------- typing machinery
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(tp)):
            return args[0], True
    return tp, False


def _parse(raw: str, tp: Any, key: str) -> Any:
    """A command-line string to a value of type ``tp``."""
    inner, optional = _split_optional(tp)
    if optional and raw.lower() in ("none", "null", ""):
        return None
    if inner is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={raw!r}: expected true or false")
    if typing.get_origin(inner) is tuple:
        if raw.startswith("["):
            try:
                return _coerce(json.loads(raw), tp, key)
            except json.JSONDecodeError:
                raise ConfigError(f"{key}={raw!r}: not a JSON list") from None
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        item = typing.get_args(inner)[0]
        return _coerce(tuple(_parse(p, item, key) for p in parts), tp, key)
    if inner in (int, float):
        try:
            return inner(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected {inner.__name__}") from None
    return _coerce(raw, tp, key)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert: int to float, list to tuple) a Python value against ``tp``."""
    inner, optional = _split_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}=None: a value is required")
    origin = typing.get_origin(inner)
    if origin is Literal:
        choices = typing.get_args(inner)
        if value not in choices:
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list of values")
        args = typing.get_args(inner)
        if len(args) == 2 and args[1] is Ellipsis:
            items = [args[0]] * len(value)
            if not value:
                raise ConfigError(f"{key}=(): expected at least one value")
        else:
            items = list(args)
            if len(value) != len(items):
                raise ConfigError(f"{key}={value!r}: expected {len(items)} values")
        return tuple(_coerce(v, t, key) for v, t in zip(value, items, strict=True))
    if inner is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected int")
        return value
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected float")
        return float(value)
    if inner is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp!r}")  # pragma: no cover
