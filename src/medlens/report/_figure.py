"""Shared figure plumbing for the report (private): Agg canvas, PNG bytes, safe labels, colours."""

from __future__ import annotations

import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: Resolution of every figure: sharp on a laptop screen, small enough to mail.
DPI = 110


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: no pyplot, so no global backend or figure list changes."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes on a white background."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def cut(text: Any, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when anything was cut."""
    s = str(text)
    return s[: limit - 1] + "…" if len(s) > limit else s


def plain(text: Any, limit: int = 40) -> str:
    """``text`` safe for matplotlib (a ``$`` would start mathtext), cut to ``limit`` characters."""
    return cut(text, limit).replace("$", r"\$")


def colors(k: int) -> list[Any]:
    """``k`` distinguishable colours: tab10, tab20, then a sampled viridis."""
    from matplotlib import colormaps

    if k <= 10:
        return [colormaps["tab10"](i) for i in range(k)]
    if k <= 20:
        return [colormaps["tab20"](i) for i in range(k)]
    return [colormaps["viridis"](i / (k - 1)) for i in range(k)]
