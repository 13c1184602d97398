"""One way to read JSON settings: files, unknown keys and ``key=value`` overrides.

Plans, training configurations, preprocessing pipelines and run folders are JSON that people
edit by hand. They all go through these helpers, so a file that is not JSON, a misspelt key
(``"lrr"``: "did you mean 'lr'?") and an override that names nothing fail the same way: one line
naming the file or the key, before any work starts.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError

__all__ = ["check_keys", "did_you_mean", "parse_override", "parse_value", "read_json"]


def read_json(path: str | Path, *, what: str = "JSON file", error: type = MedlensError) -> Any:
    """The content of ``path``; ``error`` with one line when it is missing or not JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a {what} (not UTF-8 text)") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, or ``""``."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(
    data: Any,
    known: Iterable[str],
    *,
    where: str = "",
    what: str = "key",
    error: type = MedlensError,
) -> None:
    """Refuse a mapping with keys outside ``known``, naming the first with a suggestion."""
    if not isinstance(data, dict):
        raise error(f"{where}: expected a JSON object, got {type(data).__name__}".lstrip(": "))
    known = list(known)
    unknown = sorted(set(data) - set(known))
    if unknown:
        first = unknown[0]
        more = f" (and {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
        prefix = f"{where}: " if where else ""
        raise error(f"{prefix}unknown {what} {first!r}{did_you_mean(first, known)}{more}")


def parse_value(raw: str) -> Any:
    """An override's value: JSON when it parses (``3``, ``0.01``, ``true``, ``[1, 2]``),
    comma-separated values as a list (``96,96,96``), anything else as the string."""
    raw = raw.strip()
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    if "," in raw:
        return [parse_value(part) for part in raw.split(",")]
    return raw


def parse_override(item: str, *, error: type = MedlensError) -> tuple[list[str], str]:
    """``"train.lr=0.01"`` -> ``(["train", "lr"], "0.01")``; one grammar for every ``--set``."""
    key, sep, raw = str(item).partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise error(f"--set {item!r}: not of the form key=value")
    parts = [p.strip().replace("-", "_") for p in key.split(".")]
    if any(not p for p in parts):
        raise error(f"--set {item!r}: empty name in {key!r}")
    return parts, raw.strip()
