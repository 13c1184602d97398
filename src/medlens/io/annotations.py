"""Annotation files: Pascal VOC boxes (XML) and Sunnybrook-style contours (text).

* :func:`read_voc` reads one Pascal VOC annotation: the image's file name and size and one
  :class:`Box` per ``<object>``. The XML is parsed with :mod:`defusedxml`, so entity declarations
  (the "billion laughs" bomb) and external entities or DTDs are refused, never expanded or
  fetched. Boxes must be finite numbers with ``xmin <= xmax`` and ``ymin <= ymax`` inside the
  image (VOC counts pixels from 1, other tools from 0: both are accepted, with a pixel to spare).
* :func:`read_contour` reads a contour drawn on one image, one ``x y`` pixel vertex per line
  (the Sunnybrook Cardiac Data's ``i-contours``/``o-contours``), as a ``(N, 2)`` float64 array.

Every problem raises :class:`~medlens.errors.ImageReadError`: one line naming the file and what
is wrong with it. :func:`describe_annotation` gives what ``medlens info`` prints for both.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import ImageReadError

__all__ = [
    "Box",
    "VocAnnotation",
    "describe_annotation",
    "polygon_area",
    "read_contour",
    "read_voc",
]

MAX_BYTES = 16 << 20  # annotation files are kilobytes; a bigger one is not an annotation
_SLACK = 1.0  # pixels a box may reach past the image (0- vs 1-based conventions, rounding)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf|infinity)"
_PAIR = re.compile(rf"^\s*(?:{_NUMBER})[ \t,;]+(?:{_NUMBER})\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Box:
    """One object of a VOC annotation: class name and corners in pixels."""

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False
    truncated: bool = False

    @property
    def corners(self) -> tuple[float, float, float, float]:
        return (self.xmin, self.ymin, self.xmax, self.ymax)


@dataclass
class VocAnnotation:
    """A Pascal VOC annotation: the image it describes and its boxes."""

    path: Path
    filename: str
    size: tuple[int, int, int]  # (width, height, depth)
    objects: list[Box] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Objects per class name, most frequent first."""
        return dict(Counter(box.name for box in self.objects).most_common())


def read_voc(path: str | Path) -> VocAnnotation:
    """Read a Pascal VOC XML annotation (see the module docstring for what is checked)."""
    import defusedxml
    from defusedxml import ElementTree as SafeTree

    path = Path(path)
    data = _read_bytes(path)
    try:
        root = SafeTree.fromstring(data, forbid_dtd=True)
    except defusedxml.DefusedXmlException as exc:
        raise ImageReadError(f"XML refused: {_defused_reason(exc)}", path) from None
    except SafeTree.ParseError as exc:
        raise ImageReadError(f"not well-formed XML ({_one_line(exc)})", path) from None
    except (ValueError, RecursionError, MemoryError) as exc:  # expat limits, odd encodings
        raise ImageReadError(f"not readable XML ({_one_line(exc)})", path) from None
    if root.tag != "annotation":
        raise ImageReadError(
            f"root element is <{_shown(root.tag)}>, not <annotation> (not a Pascal VOC file)",
            path,
        )
    filename = _text(root.find("filename"))
    if filename and (re.search(r"[/\\\0]", filename) or filename in (".", "..")):
        raise ImageReadError(f"<filename> {_shown(filename)!r} is not a plain file name", path)
    size = root.find("size")
    if size is None:
        raise ImageReadError("no <size> element (image width and height)", path)
    width = _count(size, "width", path, "size")
    height = _count(size, "height", path, "size")
    depth = _count(size, "depth", path, "size") if size.find("depth") is not None else 3
    if width < 1 or height < 1:
        raise ImageReadError(f"image size {width}x{height} is empty", path)
    objects = [
        _box(item, n, width, height, path) for n, item in enumerate(root.findall("object"), 1)
    ]
    return VocAnnotation(path=path, filename=filename, size=(width, height, depth), objects=objects)


def read_contour(path: str | Path) -> np.ndarray:
    """Vertices ``(N, 2)`` float64 ``(x, y)`` in pixels of a one-vertex-per-line contour file."""
    path = Path(path)
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImageReadError(
            "not a text file (contours are one 'x y' pair per line)", path
        ) from None
    rows: list[tuple[float, float]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not _PAIR.match(line):
            raise ImageReadError(f"line {number}: expected 'x y', found {_shown(line)!r}", path)
        x, y = (float(v) for v in re.split(r"[ \t,;]+", line.strip()))
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ImageReadError(f"line {number}: vertex ({x}, {y}) is not finite", path)
        rows.append((x, y))
    if len(rows) < 3:
        raise ImageReadError(f"a contour needs at least 3 vertices, found {len(rows)}", path)
    points = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(polygon_area(points)):  # coordinates near 1e308 overflow their products
        raise ImageReadError("vertex coordinates are too large", path)
    return points


def polygon_area(points: np.ndarray) -> float:
    """Area enclosed by the closed polygon ``points`` (N, 2), by the shoelace formula."""
    points = np.asarray(points, dtype=np.float64)
    x, y = points[:, 0], points[:, 1]
    with np.errstate(over="ignore", invalid="ignore"):
        twice = np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))
    return float(abs(twice) / 2.0)


def describe_annotation(path: str | Path, kind: str) -> dict[str, Any]:
    """What ``medlens info`` shows for an annotation file (``kind``: ``voc`` or ``contour``)."""
    path = Path(path)
    if kind == "voc":
        voc = read_voc(path)
        width, height, depth = voc.size
        return {
            "path": str(path),
            "kind": "annotation",
            "format": "pascal-voc",
            "image": voc.filename,
            "size": {"width": width, "height": height, "depth": depth},
            "objects": len(voc.objects),
            "classes": voc.counts(),
            "difficult": sum(box.difficult for box in voc.objects),
            "truncated": sum(box.truncated for box in voc.objects),
        }
    if kind == "contour":
        points = read_contour(path)
        low, high = points.min(axis=0), points.max(axis=0)
        closed = np.vstack([points, points[:1]])
        return {
            "path": str(path),
            "kind": "annotation",
            "format": "contour",
            "vertices": len(points),
            "bounding_box": {
                "xmin": float(low[0]),
                "ymin": float(low[1]),
                "xmax": float(high[0]),
                "ymax": float(high[1]),
            },
            "area_px2": polygon_area(points),
            "perimeter_px": float(np.linalg.norm(np.diff(closed, axis=0), axis=1).sum()),
        }
    raise ImageReadError(f"no annotation reader for {kind}", path)


# ----------------------------------------------------------------------------------- helpers
def _read_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ImageReadError(
                f"file is {size / 2**20:.0f} MiB; annotation files are far smaller", path
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError("no such file", path) from None
    except IsADirectoryError:
        raise ImageReadError("is a folder, not an annotation file", path) from None
    except OSError as exc:
        raise ImageReadError(f"cannot be read ({exc.strerror or exc})", path) from None


def _box(item, number: int, width: int, height: int, path: Path) -> Box:
    where = f"object {number}"
    name = _text(item.find("name"))
    if not name:
        raise ImageReadError(f"{where} has no <name>", path)
    box = item.find("bndbox")
    if box is None:
        raise ImageReadError(f"{where} ({_shown(name)}) has no <bndbox>", path)
    xmin, ymin, xmax, ymax = (_coordinate(box, key, where, path) for key in _CORNERS)
    if xmin > xmax or ymin > ymax:
        raise ImageReadError(
            f"{where} ({_shown(name)}): box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) has "
            "xmin > xmax or ymin > ymax",
            path,
        )
    if xmin < -_SLACK or ymin < -_SLACK or xmax > width + _SLACK or ymax > height + _SLACK:
        raise ImageReadError(
            f"{where} ({_shown(name)}): box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) lies "
            f"outside the {width}x{height} image",
            path,
        )
    return Box(
        name=name,
        xmin=xmin,
        ymin=ymin,
        xmax=xmax,
        ymax=ymax,
        difficult=_flag(item, "difficult", where, path),
        truncated=_flag(item, "truncated", where, path),
    )


_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def _coordinate(box, key: str, where: str, path: Path) -> float:
    text = _text(box.find(key))
    if not text:
        raise ImageReadError(f"{where}: <bndbox> has no <{key}>", path)
    try:
        value = float(text)
    except ValueError:
        raise ImageReadError(f"{where}: <{key}> is {_shown(text)!r}, not a number", path) from None
    if not math.isfinite(value):
        raise ImageReadError(f"{where}: <{key}> is {text!r}, not a finite number", path)
    return value


def _count(parent, key: str, path: Path, within: str) -> int:
    text = _text(parent.find(key))
    if not text:
        raise ImageReadError(f"<{within}> has no <{key}>", path)
    try:
        value = float(text)
    except ValueError:
        raise ImageReadError(f"<{key}> is {_shown(text)!r}, not a number", path) from None
    if not (math.isfinite(value) and value.is_integer() and 0 <= value < 2**31):
        raise ImageReadError(f"<{key}> is {_shown(text)!r}, not a pixel count", path)
    return int(value)


def _flag(item, key: str, where: str, path: Path) -> bool:
    text = _text(item.find(key))
    if not text:
        return False
    if text not in ("0", "1"):
        raise ImageReadError(f"{where}: <{key}> is {_shown(text)!r}, expected 0 or 1", path)
    return text == "1"


def _text(element) -> str:
    return "" if element is None or element.text is None else element.text.strip()


def _shown(text: str, limit: int = 60) -> str:
    """``text`` for a one-line message: control characters escaped, long text cut."""
    flat = str(text).encode("unicode_escape").decode("ascii")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _defused_reason(exc: Exception) -> str:
    kind = type(exc).__name__
    if kind == "EntitiesForbidden":
        return "entity declarations are not allowed (an entity-expansion bomb?)"
    if kind == "ExternalReferenceForbidden":
        return "external references are not allowed"
    if kind == "DTDForbidden":
        return "document type declarations are not allowed"
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
