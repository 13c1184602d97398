"""Figure plumbing every report and explanation draws with: an Agg canvas, PNG bytes, safe
labels, colours, and an image sample as a picture."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["DPI", "colors", "cut", "display_image", "new_figure", "plain", "to_png"]

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


def _as_array(x: Any) -> np.ndarray:
    """A NumPy array from an array, a list or a torch tensor (only what is asked for)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def display_image(image: Any) -> tuple[np.ndarray, str | None]:
    """One sample ``(C, H, W)`` / ``(C, D, H, W)`` / ``(H, W)`` as a 2D or RGB picture in [0, 1].

    3D volumes show their middle slice along D (axial for the usual D, H, W order); three
    channels are read as RGB, any other count shows the first channel. Float intensities are
    stretched between the 0.5th and 99.5th percentiles so a CT or MR slice is visible.
    """
    a = _as_array(image)
    if a.ndim == 2:
        a = a[None]
    if a.ndim == 4:
        a = a[:, a.shape[1] // 2]
    if a.ndim != 3:
        raise ValueError(f"an example image must be (C, H, W) or (C, D, H, W), got {a.shape}")
    rgb = a.shape[0] == 3
    a = np.moveaxis(a, 0, -1) if rgb else a[0]
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0, None if rgb else "gray"
    a = a.astype(np.float32)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape, dtype=np.float32), None if rgb else "gray"
    low, high = np.percentile(finite, [0.5, 99.5])
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    scale = high - low if high > low else 1.0
    out = np.clip((np.nan_to_num(a, nan=low) - low) / scale, 0.0, 1.0)
    return out, None if rgb else "gray"
