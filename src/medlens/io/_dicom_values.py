"""Values of DICOM attributes as numbers, times and dates: ``None`` for anything unreadable.

The readers ask these rather than converting themselves, so a damaged or missing value is
judged in one place (the caller decides whether ``None`` is acceptable).
"""

from __future__ import annotations

import datetime as dt

import numpy as np

__all__ = [
    "date_of",
    "datetime_of",
    "integer",
    "number",
    "numbers",
    "seconds_of_datetime",
    "seconds_of_day",
    "time_of_day",
]


def numbers(value, count: int) -> np.ndarray | None:
    """``count`` finite numbers (a multi-valued DS, say)."""
    if value is None:
        return None
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return out if out.size == count and np.all(np.isfinite(out)) else None


def number(value) -> float | None:
    """One finite number."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def integer(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def seconds_of_day(value) -> float | None:
    """A TM value ``HHMMSS.ffffff`` (or shorter) as seconds since midnight."""
    if not value:
        return None
    text = str(value).strip()
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def seconds_of_datetime(value) -> float | None:
    """``YYYYMMDDHHMMSS.ffffff`` to seconds since midnight of its day (for ordering)."""
    if not value:
        return None
    text = str(value).strip()
    return seconds_of_day(text[8:]) if len(text) > 8 else None


def date_of(value) -> dt.date | None:
    """A DA value ``YYYYMMDD``."""
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def time_of_day(value) -> dt.time | None:
    """A TM value as a time of day."""
    seconds = seconds_of_day(value)
    if seconds is None or not 0 <= seconds < 86400:
        return None
    whole = int(seconds)
    micro = min(round((seconds - whole) * 1e6), 999999)
    return dt.time(whole // 3600, whole // 60 % 60, whole % 60, micro)


def datetime_of(value) -> dt.datetime | None:
    """A DT value (its UTC offset dropped: the times of one series share it)."""
    text = str(value or "").strip()
    for sign in ("+", "-"):
        cut = text.find(sign, 8)
        if cut > 0:
            text = text[:cut]
    day = date_of(text[:8])
    if day is None:
        return None
    return dt.datetime.combine(day, time_of_day(text[8:]) or dt.time())
