"""Helpers shared by the benchmarks in this folder.

* :func:`require_data` finds the real-data folder (``MEDLENS_DATA``, default ``../shared/data``) or
  skips the benchmark with a clear message and a JSON line saying why.
* :func:`round_robin` times several libraries on one input in the same process, interleaved so that
  machine noise (other jobs, thermal state, page cache) falls on all of them alike.
* :func:`print_table` prints a plain-text table; :func:`emit_json` prints the final JSON line.

Every benchmark prints human-readable text first and, as the LAST line of stdout, exactly one JSON
object with all its figures. Progress and diagnostics go to stderr so they never come after it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "Timing",
    "configure_threads",
    "emit_json",
    "environment",
    "fmt_rate",
    "fmt_ratio",
    "limit_threads",
    "link",
    "log",
    "print_table",
    "require_data",
    "round_robin",
    "skip",
    "timed_call",
]


def log(*parts: object) -> None:
    """Progress and diagnostics: stderr, so stdout ends with the JSON line."""
    print(*parts, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- data
def skip(benchmark: str, reason: str) -> None:
    """End the benchmark as skipped: a message, then the JSON line, exit status 0."""
    print(f"SKIPPED {benchmark}: {reason}", flush=True)
    emit_json({"benchmark": benchmark, "skipped": reason})
    sys.exit(0)


def require_data(benchmark: str, *relative: str) -> Path:
    """The real-data root, or skip the benchmark when it (or any of ``relative``) is missing."""
    from medlens._data_path import data_root

    root = data_root()
    if not root.is_dir():
        skip(
            benchmark,
            f"real data folder {root} not found; set MEDLENS_DATA to the shared data folder",
        )
    missing = [name for name in relative if not (root / name).exists()]
    if missing:
        skip(benchmark, f"missing under {root}: {', '.join(missing)}")
    return root


# -------------------------------------------------------------------------------------- threads
def configure_threads() -> dict[str, int | None]:
    """Use every core for torch (and report what SimpleITK/ITK use); returns the settings."""
    cores = os.cpu_count() or 1
    settings: dict[str, int | None] = {"cpu_count": cores}
    try:
        import torch

        torch.set_num_threads(cores)
        settings["torch_threads"] = torch.get_num_threads()
    except ImportError:
        settings["torch_threads"] = None
    try:
        import SimpleITK as sitk

        settings["sitk_threads"] = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    except ImportError:
        settings["sitk_threads"] = None
    return settings


@contextlib.contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` torch and SimpleITK threads (None: leave them), then restore.

    On a machine whose cores other processes also use, one thread can beat all of them by far:
    a parallel region waits for its slowest thread, and a descheduled thread stalls it.
    """
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    try:
        import SimpleITK as sitk
    except ImportError:
        sitk = None
    sitk_before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() if sitk else None
    torch.set_num_threads(threads)
    if sitk:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if sitk:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(sitk_before)


def environment(packages: Iterable[str]) -> dict[str, Any]:
    """Versions of ``packages`` (None when not installed) and a description of the machine."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


# --------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Wall-clock seconds of each run of one library on one input."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def per_second(self) -> float:
        """Calls per second from the median time."""
        return 1.0 / self.median

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "min_s": self.min,
            "max_s": max(self.times),
            "runs": len(self.times),
            "per_second": self.per_second,
        }


def timed_call(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall-clock seconds, timed as :func:`round_robin` times it."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    return result, elapsed


def _timed(fn: Callable[[], Any]) -> float:
    return timed_call(fn)[1]  # the result is freed here, outside the timed region


def round_robin(
    cases: dict[str, Callable[[], Any]],
    *,
    repeats: int | None = None,
    budget_s: float = 10.0,
    min_repeats: int = 7,
    max_repeats: int = 51,
    warmed_up: bool = False,
) -> tuple[dict[str, Timing], int]:
    """Time every case in interleaved rounds; returns the timings and the number of rounds.

    One untimed warm-up call per case comes first (imports, lazy plugin loading, page cache), unless
    the caller has already called every case once (``warmed_up``). Each round then calls every case
    once, starting from a different case each round so that none is always first or last. Without
    ``repeats``, the first round's duration sets the number of rounds so that all of them take
    about ``budget_s`` seconds, between ``min_repeats`` and ``max_repeats``.
    """
    names = list(cases)
    # Long-lived objects (imported modules, loaders) go to the permanent generation, so that the
    # collection before each call stays cheap and the collector never walks them during one.
    gc.collect()
    gc.freeze()
    if not warmed_up:
        for name in names:
            _timed(cases[name])
    timings = {name: Timing() for name in names}
    rounds = 0
    while repeats is None or rounds < repeats:
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            timings[name].times.append(_timed(cases[name]))
        rounds += 1
        if repeats is None:
            first_round = max(sum(t.times[0] for t in timings.values()), 1e-6)
            repeats = int(min(max_repeats, max(min_repeats, math.ceil(budget_s / first_round))))
    return timings, rounds


# -------------------------------------------------------------------------------------- output
def fmt_rate(value: float | None) -> str:
    """Calls per second with three significant figures; '-' when absent."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def fmt_ratio(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.2f}x"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(cells[0]))
    print()
    print(title)
    print(rule)
    print(line(cells[0]))
    print(rule)
    for row in cells[1:]:
        print(line(row))
    print(rule, flush=True)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def emit_json(payload: dict[str, Any]) -> None:
    """Print ``payload`` as one JSON line: the last line a benchmark writes to stdout."""
    sys.stderr.flush()
    print(json.dumps(payload, default=_json_default, allow_nan=False), flush=True)


def link(source: Path, target: Path) -> None:
    """A symbolic link ``target`` to ``source`` (kept if there); a folder is linked file by
    file, because folder links are not followed when a folder tree is searched."""
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                link(path, target / path.relative_to(source))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.symlink(source.resolve(), target)
