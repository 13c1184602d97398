"""``report.html`` of a registration: what moved, how well, and how regular the deformation is.

Figures on the fixed grid, through the middle of the volume (the three planes in 3D, the image in
2D): a checkerboard of the fixed image against the moving one as the images lie in the world
(before) and registered (after); their absolute differences before and after (each image scaled
by its own 1st-99th percentiles); the deformed grid (lines of constant moving coordinate every
``5%`` of the image) over the fixed image; and the Jacobian determinant of the deformation
(blue: compression, red: expansion, black: folding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medlens._atomic import atomic_write_text
from medlens.image import Image
from medlens.report.figures import display_image, new_figure, to_png
from medlens.report.page import escape, html_page, number, section, try_figure

__all__ = ["write_registration_report"]


def _planes(shape: tuple[int, ...]) -> list[tuple[str, Any]]:
    if len(shape) == 2:
        return [("image", (slice(None), slice(None)))]
    z, y, x = (s // 2 for s in shape)
    return [
        ("axial", (z, slice(None), slice(None))),
        ("coronal", (slice(None), y, slice(None))),
        ("sagittal", (slice(None), slice(None), x)),
    ]


def _aspect(image: Image, plane: str) -> float:
    if image.spatial_dims == 2:
        return float(image.spacing[1] / image.spacing[0])
    sx, sy, sz = image.spacing
    return float({"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[plane])


def _slice(image: Image, where) -> np.ndarray:
    """A plane of ``image`` as ``(C, H, W)``."""
    array = np.asarray(image.array).reshape(-1, *image.spatial_shape)
    return array[(slice(None), *where)]


def _shown(plane: np.ndarray) -> np.ndarray:
    """A ``(C, H, W)`` plane as an RGB picture in [0, 1]."""
    picture, cmap = display_image(plane)
    return np.repeat(picture[..., None], 3, axis=-1) if cmap else picture


def _checker(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    h, w = a.shape[:2]
    yy, xx = np.meshgrid(np.arange(h) * tiles // max(h, 1), np.arange(w) * tiles // max(w, 1))
    mask = ((yy.T + xx.T) % 2).astype(bool)
    return np.where(mask[..., None], a, b)


def _comparison(fixed: Image, before: Image, after: Image, kind: str) -> bytes:
    planes = _planes(fixed.spatial_shape)
    fig = new_figure(3.0 * len(planes), 6.0)
    for col, (name, where) in enumerate(planes):
        f = _shown(_slice(fixed, where))
        for row, (label, other) in enumerate((("before", before), ("after", after))):
            ax = fig.add_subplot(2, len(planes), row * len(planes) + col + 1)
            o = _shown(_slice(other, where))
            if kind == "checkerboard":
                ax.imshow(_checker(f, o), aspect=_aspect(fixed, name), origin="upper")
            else:
                diff = np.abs(f.mean(-1) - o.mean(-1))
                ax.imshow(diff, cmap="magma", vmin=0, vmax=1, aspect=_aspect(fixed, name))
            ax.set_title(f"{name}, {label}", fontsize=8)
            ax.axis("off")
    return to_png(fig)


def _grid(fixed: Image, coords: np.ndarray) -> bytes:
    """Lines of constant moving index coordinate over the fixed image."""
    planes = _planes(fixed.spatial_shape)
    fig = new_figure(3.2 * len(planes), 3.4)
    n = fixed.spatial_dims
    for col, (name, where) in enumerate(planes):
        ax = fig.add_subplot(1, len(planes), col + 1)
        ax.imshow(_shown(_slice(fixed, where)), aspect=_aspect(fixed, name), alpha=0.6)
        plane = coords[where]  # (H, W, n): moving index (x, y[, z]) per fixed voxel
        shown_axes = [a for a in range(n) if not isinstance(where[n - 1 - a], int)]
        for axis, colour in zip(shown_axes, ("tab:orange", "tab:cyan"), strict=False):
            values = plane[..., axis]
            step = max(1.0, 0.05 * float(np.ptp(values)))
            levels = np.arange(np.floor(values.min()), np.ceil(values.max()) + step, step)
            if len(levels) > 1:
                ax.contour(values, levels=levels, colors=colour, linewidths=0.6)
        ax.set_title(f"deformed grid, {name}", fontsize=8)
        ax.axis("off")
    return to_png(fig)


def _jacobian(fixed: Image, determinant: np.ndarray) -> bytes:
    from matplotlib.colors import TwoSlopeNorm

    planes = _planes(fixed.spatial_shape)
    fig = new_figure(3.2 * len(planes) + 0.6, 3.4)
    high = max(2.0, float(np.percentile(determinant, 99.5)))
    norm = TwoSlopeNorm(vcenter=1.0, vmin=0.0, vmax=high)
    image = None
    for col, (name, where) in enumerate(planes):
        ax = fig.add_subplot(1, len(planes), col + 1)
        values = determinant[where]
        image = ax.imshow(values, cmap="coolwarm", norm=norm, aspect=_aspect(fixed, name))
        folded = np.ma.masked_where(values > 0, np.ones_like(values))
        ax.imshow(folded, cmap="gray_r", vmin=0, vmax=1, aspect=_aspect(fixed, name))
        ax.set_title(f"Jacobian determinant, {name}", fontsize=8)
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=fig.axes, shrink=0.8)
    return to_png(fig)


def _table(metrics: dict[str, Any]) -> str:
    rows = [("seconds", number(metrics.get("seconds")))]
    similarity = metrics.get("similarity", {})
    rows.append(
        (
            "similarity (lower is better)",
            f"{number(similarity.get('start'))} -> {number(similarity.get('registered'))}",
        )
    )
    if "labels" in metrics:
        before, after = metrics["labels_before"], metrics["labels"]
        rows.append(("mean Dice", f"{number(before['dice_mean'])} -> {number(after['dice_mean'])}"))
        for label, entry in after["per_label"].items():
            was = before["per_label"].get(label, {})
            rows.append(
                (
                    f"label {label}: Dice, HD95 mm",
                    f"{number(was.get('dice'))} -> "
                    f"{number(entry['dice'])}, {number(was.get('hd95_mm'))} -> "
                    f"{number(entry['hd95_mm'])}",
                )
            )
    if "landmarks" in metrics:
        before, after = metrics["landmarks_before"], metrics["landmarks"]
        rows.append(("landmarks", str(after["n"])))
        rows.append(("TRE median", f"{number(before['median'])} -> {number(after['median'])}"))
        if "rtre_median" in after:
            rows.append(
                (
                    "rTRE median (of the diagonal)",
                    f"{number(before['rtre_median'])} -> {number(after['rtre_median'])}",
                )
            )
    rows.append(("folding (det J <= 0)", f"{100 * metrics.get('folding_fraction', 0):.3f}%"))
    rows.append(("SDlogJ", number(metrics.get("sdlogj"))))
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def write_registration_report(folder, result, metrics: dict[str, Any]) -> Path:
    """Write ``folder/report.html`` for a :class:`~medlens.registration.register.Registration`
    and its ``metrics.json`` figures."""
    from medlens.metrics.registration import jacobian_determinant
    from medlens.registration.register import Registration

    fixed = result.fixed
    n = fixed.spatial_dims
    before = Registration(fixed, result.moving, np.eye(n + 1), None).warp()
    after = result.warp()
    coords = result.coords()[0].numpy()
    if result.field is not None:
        determinant = jacobian_determinant(result.field[0].numpy())
    else:
        determinant = np.ones(fixed.spatial_shape)
    stages = "".join(f"<li>{escape(stage.name)}</li>" for stage in result.stages)
    sections = [
        section("summary", "Summary", _table(metrics) + f"<ul>{stages}</ul>"),
        section(
            "checkerboard",
            "Checkerboard",
            try_figure(
                lambda: _comparison(fixed, before, after, "checkerboard"),
                "checkerboard of the fixed and moving images before and after",
                "Fixed and moving images in alternating squares: edges that run on across the "
                "squares are aligned. Top: as the images lie in the world; bottom: registered.",
            ),
        ),
        section(
            "difference",
            "Differences",
            try_figure(
                lambda: _comparison(fixed, before, after, "difference"),
                "absolute differences before and after",
                "|fixed - moving|, each scaled by its own percentiles (across modalities this "
                "shows structure, not error).",
            ),
        ),
        section(
            "grid",
            "Deformed grid",
            try_figure(
                lambda: _grid(fixed, coords),
                "deformed grid",
                "Lines of constant moving-image coordinate: where the fixed image's voxels are "
                "taken from.",
            ),
        ),
        section(
            "jacobian",
            "Jacobian determinant",
            try_figure(
                lambda: _jacobian(fixed, determinant),
                "Jacobian determinant map",
                "Local volume change: 1 unchanged, below 1 compressed (blue), above expanded "
                "(red); black where the map folds (none by construction of the diffeomorphism).",
            ),
        ),
    ]
    path = Path(folder) / "report.html"
    atomic_write_text(path, html_page("Registration", sections, kind="Registration report"))
    return path
