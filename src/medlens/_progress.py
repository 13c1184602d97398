"""Progress of long loops, on stderr so stdout stays clean for JSON and piped output.

On a terminal: a rich progress bar. Elsewhere (a log file, a pipe, a batch job) a bar would
show nothing until the end, so plain lines are printed instead: ``reading images: 120/524
(23%, 41 s)``, at most every ``every`` seconds, and one at the end of a loop that took a while.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["progress"]


def progress(
    items: Iterable[T],
    description: str,
    *,
    enabled: bool = True,
    total: int | None = None,
    transient: bool = False,
    every: float = 20.0,
) -> Iterator[T]:
    """Iterate ``items`` showing progress (nothing when not ``enabled``)."""
    if not enabled:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    from rich.console import Console

    console = Console(stderr=True)
    if console.is_terminal:
        from rich.progress import track

        yield from track(items, description=description, total=total, console=console,
                         transient=transient)  # fmt: skip
        return
    yield from _plain(items, description, total, every)


def _plain(items: Iterable[T], description: str, total: int | None, every: float) -> Iterator[T]:
    started = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every:
            last = now
            _line(description, done, total, now - started)
    if time.monotonic() - started >= every / 4 and done:
        _line(description, done, total, time.monotonic() - started)


def _line(description: str, done: int, total: Any, seconds: float) -> None:
    count = f"{done}/{total} ({100 * done / total:.0f}%" if total else f"{done} ("
    print(f"{description}: {count}, {seconds:.0f} s)", file=sys.stderr, flush=True)
