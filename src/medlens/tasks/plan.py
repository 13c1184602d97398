"""The typed plan every task's plan builds on: JSON in and out, unknown keys refused, one
``--set`` grammar.

A plan is a dataclass. Its ``train`` field is a :class:`~medlens.engine.TrainConfig` (typed:
``train.lr=1e-3x`` fails, ``train.lrr=1`` fails with "did you mean 'lr'?"); its other fields
are the task's own (the segmentation plan's patch size and network, the classification plan's
model and augmentation). ``--set key=value`` addresses them all the same way:

- ``train.lr=0.01``: a training setting, typed by :class:`~medlens.engine.TrainConfig`;
- ``lr=0.01``: the same, when ``lr`` is not a field of the plan itself;
- ``patch_size=96,96,96``, ``network.encoder=residual``: a plan field, or a key of a section
  (a key the section does not hold is refused, with the closest one suggested).

Values parse as JSON when they can, comma-separated lists as lists (:mod:`medlens._json`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from medlens._json import check_keys, did_you_mean, parse_override, parse_value, read_json
from medlens.errors import MedlensError

__all__ = ["PLAN_RUNTIME_KEYS", "Plan", "PlanError"]

P = TypeVar("P", bound="Plan")

#: Training settings a plan does not hold: the command line decides them for each run.
PLAN_RUNTIME_KEYS = frozenset({"seed", "progress"})


class PlanError(MedlensError):
    """A plan file that cannot be used, or an override that does not fit it."""


class Plan:
    """Base of the tasks' plan dataclasses (see the module's notes).

    Subclasses are dataclasses with a ``train`` field; ``FORMAT`` (if not None) is written as
    the plan's ``format`` key and checked on reading.
    """

    FORMAT: ClassVar[str | None] = None
    train: Any

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        data = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "train":
                value = {k: v for k, v in value.to_dict().items() if k not in PLAN_RUNTIME_KEYS}
            data[f.name] = _plain(value)
        return data

    @classmethod
    def from_dict(cls: type[P], data: Any, *, where: str = "plan") -> P:
        """Build from JSON values: unknown keys are refused (with a suggestion), the ``train``
        section is typed; older plans are brought up to date by :meth:`_upgrade`."""
        from medlens.engine import ConfigError, TrainConfig

        if not isinstance(data, dict):
            raise PlanError(f"{where}: expected a JSON object, got {type(data).__name__}")
        data = cls._upgrade(dict(data))
        if cls.FORMAT is not None and data.get("format") != cls.FORMAT:
            raise PlanError(f'{where}: not a {cls.FORMAT} plan (its "format" is '
                            f"{data.get('format')!r})")  # fmt: skip
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        check_keys(data, fields, where=where, error=PlanError)
        train = dict(data.get("train") or {})
        runtime = sorted(PLAN_RUNTIME_KEYS & set(train))
        if runtime:
            key = runtime[0]
            raise PlanError(f"{where}: train.{key} is not a plan setting (give --{key})")
        try:
            data["train"] = TrainConfig.from_dict(train)
        except ConfigError as exc:
            raise PlanError(f"{where}: train: {exc}") from None
        try:
            return cls(**data)
        except TypeError as exc:
            raise PlanError(f"{where}: {exc}") from None

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Older plans' keys in today's places (subclasses); the default changes nothing."""
        return data

    def save(self, path: str | Path) -> Path:
        from medlens._atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return Path(path)

    @classmethod
    def load(cls: type[P], path: str | Path) -> P:
        path = Path(path)
        data = read_json(path, what="plan file", error=PlanError)
        try:
            return cls.from_dict(data, where=str(path))
        except PlanError as exc:
            text = str(exc)
            raise PlanError(text if text.startswith(str(path)) else f"{path}: {text}") from None

    # ------------------------------------------------------------------ overrides
    def with_overrides(self: P, overrides: Iterable[str]) -> P:
        """A copy with ``key=value`` items applied (the module's grammar), checked like a
        plan read from a file."""
        from medlens.engine import ConfigError, apply_overrides

        data = self.to_dict()
        train = self.train
        fields = {f.name: f for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        train_keys = set(type(self.train).__dataclass_fields__) - PLAN_RUNTIME_KEYS
        for item in overrides:
            parts, raw = parse_override(item, error=PlanError)
            if parts[0] == "train" or (parts[0] not in fields and parts[0] in train_keys):
                keys = parts[1:] if parts[0] == "train" else parts
                if len(keys) != 1 or keys[0] not in train_keys:
                    name = ".".join(keys)
                    raise PlanError(
                        f"--set {item!r}: unknown training setting {name!r}"
                        f"{did_you_mean(name, sorted(train_keys))}"
                    )
                try:
                    train = apply_overrides(train, [f"{keys[0]}={raw}"])
                except ConfigError as exc:
                    raise PlanError(f"--set {item!r}: {exc}") from None
                continue
            if parts[0] not in fields:
                known = sorted(set(fields) | train_keys)
                raise PlanError(f"--set {item!r}: unknown plan key {parts[0]!r}"
                                f"{did_you_mean(parts[0], known)}")  # fmt: skip
            _assign(data, parts, parse_value(raw), item)
        data["train"] = {k: v for k, v in train.to_dict().items() if k not in PLAN_RUNTIME_KEYS}
        return type(self).from_dict(data, where="plan with --set")

    def describe_overrides(self) -> list[str]:
        """Names of every settable key (for help texts and error messages)."""
        names = [f.name for f in dataclasses.fields(self) if f.name != "train"]  # type: ignore
        return names + [f"train.{k}" for k in self.train.to_dict() if k not in PLAN_RUNTIME_KEYS]


def _assign(data: dict[str, Any], parts: list[str], value: Any, item: str) -> None:
    """Set ``data[parts[0]][parts[1]]... = value``; sections must hold the key already."""
    target = data
    for depth, part in enumerate(parts[:-1]):
        section = target.get(part)
        if not isinstance(section, dict):
            where = ".".join(parts[: depth + 1])
            raise PlanError(f"--set {item!r}: {where!r} is not a section of the plan")
        target = section
    last = parts[-1]
    if len(parts) > 1 and last not in target:
        where = ".".join(parts[:-1])
        keys = ", ".join(sorted(target))
        raise PlanError(f"--set {item!r}: {where!r} has no key {last!r}"
                        f"{did_you_mean(last, sorted(target))} (keys: {keys})")  # fmt: skip
    target[last] = value


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
