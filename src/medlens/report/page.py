"""The building blocks of every medlens HTML page: escaping, numbers, figures, sections, the page.

Every report (classification, segmentation evaluation, explanations) is assembled from these,
so they all look the same and share the same guarantees: one static file with the style sheet
inline and every figure a PNG embedded as a ``data:`` URI (it opens offline, can be mailed or
archived with the run), no script, and every piece of text escaped.

A page is a list of sections, ``(anchor, heading, html)`` triples made by :func:`section`;
:func:`html_page` links each from the navigation bar at the top.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "Section",
    "escape",
    "figure",
    "html_page",
    "interval",
    "number",
    "png_size",
    "section",
    "try_figure",
]

#: One section of a page: ``(anchor, heading, html)``, as :func:`section` makes it.
Section = tuple[str, str, str]

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
background:#f6f8fa;margin:0}
main{max-width:1100px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:1.7em;margin:0 0 4px}h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;
margin-top:36px}
.meta{color:#59636e;margin:0 0 16px}nav a{margin-right:14px}
table{border-collapse:collapse;margin:8px 0 16px}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ci{color:#59636e;font-size:.85em}.scroll{overflow-x:auto}
.figs{display:flex;flex-wrap:wrap;gap:24px}.figs>figure{flex:1 1 400px}
figure{margin:8px 0;max-width:100%}figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#424a53;font-size:.92em;max-width:620px}
.note{color:#9a6700}pre{background:#f6f8fa;padding:12px;overflow-x:auto;font-size:.85em}
details summary{cursor:pointer;font-weight:600}
"""


def escape(text: Any) -> str:
    """``str(text)`` safe inside HTML text and quoted attributes: ``<&>"'`` become entities.

    Class names, notes and configurations come from users and data sets; none may become markup.
    """
    return html.escape(str(text), quote=True)


def number(value: Any) -> str:
    """A metric as the reports print it: integers as they are, other numbers to three decimals,
    ``None`` / NaN / infinity as ``n/a`` (an undefined metric, not a number to compare)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.3f}"


def interval(entry: Any, sep: str = " ") -> str:
    """``value [low, high]`` as HTML (the interval greyed), or the plain value without one.

    ``entry`` is a ``{"value", "low", "high"}`` mapping or a bare number; ``sep`` goes between
    the value and the bracket (``"<br>"`` in narrow table cells).
    """
    if not isinstance(entry, Mapping):
        return escape(number(entry))
    text = escape(number(entry.get("value")))
    if entry.get("low") is not None and entry.get("high") is not None:
        text += f'{sep}<span class="ci">[{number(entry["low"])}, {number(entry["high"])}]</span>'
    return text


def png_size(png: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG's header, so the page reserves the image's space before
    it decodes (no layout jumps) without decoding it here."""
    return struct.unpack(">II", png[16:24])


def figure(png: bytes, alt: str, caption: str) -> str:
    """A ``<figure>`` with ``png`` embedded as a ``data:`` URI (the page needs no other file)."""
    width, height = png_size(png)
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}" width="{width}" '
        f'height="{height}"><figcaption>{escape(caption)}</figcaption></figure>'
    )


def try_figure(make: Callable[[], bytes], alt: str, caption: str) -> str:
    """The figure ``make()`` draws, or a visible note saying why it could not be drawn.

    A figure that cannot be drawn for these data (``make`` raises :class:`ValueError`, e.g. a
    ROC curve of a single class) must not cost the whole page: the page still renders and says
    what is missing.
    """
    try:
        return figure(make(), alt, caption)
    except ValueError as exc:
        return f'<p class="note">{escape(alt)} not drawn: {escape(exc)}</p>'


def section(anchor: str, heading: str, body: str) -> Section:
    """A page section: ``<section id=anchor>`` with its heading, and the pair the navigation bar
    of :func:`html_page` links to. ``anchor`` is markup (a fixed identifier), ``body`` HTML."""
    return anchor, heading, f'<section id="{anchor}"><h2>{escape(heading)}</h2>{body}</section>'


def html_page(title: str, sections: list[Section], kind: str = "Report") -> str:
    """One self-contained page: ``sections`` are ``(anchor, heading, html)`` from
    :func:`section`, linked from a navigation bar; ``kind`` opens the page's byline."""
    from medlens import __version__

    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    nav = "".join(f'<a href="#{a}">{escape(h)}</a>' for a, h, _ in sections)
    body = "\n".join(s for _, _, s in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body><main>"
        f'<h1>{escape(title)}</h1><p class="meta">{escape(kind)}, written {escape(stamp)} '
        f"by medlens {escape(__version__)}.</p><nav>{nav}</nav>\n{body}\n</main></body></html>\n"
    )
