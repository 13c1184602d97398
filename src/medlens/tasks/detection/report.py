"""``report.html`` of a detection evaluation: metrics with intervals, FROC, examples, per image.

Each image is ranked by its F1 at IoU 0.5 (detections scoring at least 0.5 against the ground
truth, matched greedily by score within each class); the best, median and worst images are drawn
with the ground-truth boxes in amber and the predicted boxes (score at least 0.3, with class and
score) in azure, the colours of the segmentation overlays. A 3D volume shows the axial, coronal
and sagittal planes through its highest-scoring shown detection (else its first finding), with
each box's intersection with a plane drawn as a rectangle. The page is built from
:mod:`medlens.report.page` (one file, figures embedded); the overlays are also written beside it
as PNGs, all atomically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.tasks.detection._report_tables import (
    F1_SCORE,
    _counts,
    _curves,
    _esc,
    _froc,
    _images,
    _localisation,
    _metrics,
    _plan,
    _summary,
)
from medlens.tasks.segmentation.overlays import (
    PREDICTION_COLOUR,
    REFERENCE_COLOUR,
    finish_overlay,
)

__all__ = ["detection_figure", "image_scores", "rank_images", "write_detection_report"]

F1_IOU, SHOWN_SCORE = 0.5, 0.3
_MAX_SHOWN = 100  # predicted boxes drawn per image, highest scores first


# ---------------------------------------------------------------------------------- ranking
def image_scores(
    cases: Sequence[Any],
    detections: Sequence[Mapping[str, Any]],
    *,
    score: float = F1_SCORE,
    iou: float = F1_IOU,
) -> list[dict[str, Any]]:
    """Per image ``id``, ``f1``, ``tp``, ``fp``, ``fn``: detections scoring at least ``score``
    matched greedily (highest score first) to unmatched ground truth of their class at IoU at
    least ``iou``. An image with neither boxes nor detections scores F1 1."""
    from medlens.boxes import box_iou

    out = []
    for case, det in zip(cases, detections, strict=True):
        keep = np.asarray(det["scores"], float) >= score
        boxes = np.asarray(det["boxes"], float)[keep]
        labels = np.asarray(det["labels"])[keep]
        order = np.argsort(-np.asarray(det["scores"], float)[keep], kind="stable")
        truth, truth_labels = np.asarray(case.boxes, float), np.asarray(case.labels)
        overlap = box_iou(boxes, truth) if len(boxes) and len(truth) else None
        used = np.zeros(len(truth), bool)
        tp = 0
        for i in order:
            if overlap is None:
                break
            row = np.where((truth_labels == labels[i]) & ~used, overlap[i], -1.0)
            j = int(np.argmax(row))
            if row[j] >= iou:
                used[j], tp = True, tp + 1
        fp, fn = len(boxes) - tp, len(truth) - tp
        f1 = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        out.append({"id": str(case.id), "f1": f1, "tp": tp, "fp": fp, "fn": fn})
    return out


def rank_images(scores: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """``(role, index)`` of the best, median and worst image by F1 (ties: the earlier image
    ranks higher); with fewer than three images one takes several roles (``"best and median"``)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i]["f1"], i))
    if not order:
        return []
    picks = {"best": order[0], "median": order[(len(order) - 1) // 2], "worst": order[-1]}
    roles: dict[int, list[str]] = {}
    for role, i in picks.items():
        roles.setdefault(i, []).append(role)
    return [(" and ".join(r), i) for i, r in roles.items()]


# ---------------------------------------------------------------------------------- figures
def _point(case: Any, det: Mapping[str, Any], n: int) -> np.ndarray:
    """Index point ``(x, y[, z])`` the 3D planes pass through."""
    scores = np.asarray(det["scores"], float)
    shown = np.flatnonzero(scores >= SHOWN_SCORE)
    if shown.size:
        box = np.asarray(det["boxes"], float)[shown[np.argmax(scores[shown])]]
    elif len(case.boxes):
        box = np.asarray(case.boxes[0], float)
    else:
        return (np.asarray(case.image.shape[1:][::-1], float) - 1) / 2
    return (box[:n] + box[n:]) / 2


def _panels(shape: Sequence[int], point: np.ndarray) -> list[tuple[str, tuple, int | None, int]]:
    """``(name, array index, fixed index axis or None, slice)`` of each panel; index axes are
    ``x=0, y=1, z=2``, array axes reversed."""
    if len(shape) == 2:
        return [("", (slice(None), slice(None)), None, 0)]
    out = []
    for axis, name in ((2, "axial"), (1, "coronal"), (0, "sagittal")):
        k = int(np.clip(round(float(point[axis])), 0, shape[2 - axis] - 1))
        index: list[Any] = [slice(None)] * 3
        index[2 - axis] = k
        out.append((f"{name} slice {k}", tuple(index), axis, k))
    return out


def _rectangles(boxes: np.ndarray, fixed: int | None, k: int) -> list[tuple[int, tuple]]:
    """``(box index, (x, y, width, height))`` in a panel's data coordinates (columns, rows) of
    the boxes crossing it: whole 2D boxes, or 3D boxes' sections by the plane ``fixed == k``."""
    n = boxes.shape[1] // 2 if boxes.ndim == 2 else 0
    if fixed is None:
        col, row = 0, 1
    else:
        col, row = [a for a in range(3) if a != fixed][:2]
    out = []
    for i, b in enumerate(boxes):
        if fixed is not None and not b[fixed] <= k <= b[n + fixed]:
            continue
        out.append((i, (b[col], b[row], b[n + col] - b[col], b[n + row] - b[row])))
    return out


def detection_figure(
    image: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray],
    found: Mapping[str, Any],
    *,
    class_names: Sequence[str] = (),
    spacing: Sequence[float] | None = None,
    point: Sequence[float] | None = None,
    title: str = "",
) -> bytes:
    """PNG of ``image`` ``(C, *shape)`` with the ground-truth boxes and predicted boxes.

    Args:
        image: ``(C, H, W)`` (three channels show in colour) or ``(C, D, H, W)``.
        truth: ``(boxes (G, 2n), labels (G,))`` in index coordinates ``x, y[, z]``.
        found: ``boxes``, ``scores``, ``labels`` of the predictions; those scoring at least 0.3
            are drawn with their class and score.
        class_names: names of the labels (default the label numbers).
        spacing: mm per index axis ``(x, y[, z])`` for the aspect ratio; default 1 mm.
        point: index point the 3D planes pass through; default the volume's centre.
        title: the figure's title.
    """
    from matplotlib.patches import Rectangle

    from medlens.report.figures import new_figure, plain

    array = np.asarray(image, float)
    shape = array.shape[1:]
    n = len(shape)
    rgb = n == 2 and array.shape[0] == 3
    pixels = array if rgb else array[0]
    low, high = np.percentile(pixels, (0.5, 99.5)) if pixels.size else (0.0, 1.0)
    sp = np.asarray(spacing if spacing is not None else (1.0,) * n, float)
    centre = np.asarray(point if point is not None else (np.asarray(shape[::-1]) - 1) / 2, float)
    gt_boxes = np.asarray(truth[0], float).reshape(-1, 2 * n)
    gt_labels = np.asarray(truth[1]).reshape(-1)
    scores = np.asarray(found["scores"], float).reshape(-1)
    order = np.argsort(-scores, kind="stable")[:_MAX_SHOWN]
    order = order[scores[order] >= SHOWN_SCORE]
    boxes = np.asarray(found["boxes"], float).reshape(-1, 2 * n)[order]
    labels, shown_scores = np.asarray(found["labels"]).reshape(-1)[order], scores[order]

    def name(label: Any) -> str:
        k = int(label)
        return plain(class_names[k] if 0 <= k < len(class_names) else k, 20)

    panels = _panels(shape, centre)
    height, widths = 4.2, []
    for _, _, fixed, _ in panels:
        col, row = (0, 1) if fixed is None else [a for a in range(3) if a != fixed][:2]
        aspect = sp[row] / sp[col]
        rows, cols = shape[n - 1 - row], shape[n - 1 - col]
        widths.append(max(1.5, height * cols / max(rows * aspect, 1e-6)))
    fig = new_figure(min(sum(widths) + 0.4, 14.0), height + 0.7)
    axes = fig.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
    for ax, (label, index, fixed, k) in zip(axes, panels, strict=True):
        col, row = (0, 1) if fixed is None else [a for a in range(3) if a != fixed][:2]
        origin = "upper" if fixed in (None, 2) else "lower"  # z upwards in coronal, sagittal
        view = {"origin": origin, "interpolation": "nearest", "aspect": sp[row] / sp[col]}
        scale = max(float(high - low), 1e-12)
        if rgb:
            ax.imshow(np.clip((np.moveaxis(array, 0, -1) - low) / scale, 0.0, 1.0), **view)
        else:
            ax.imshow(pixels[index], cmap="gray", vmin=low, vmax=high, **view)
        for i, (x, y, w, h) in _rectangles(gt_boxes, fixed, k):
            ax.add_patch(Rectangle((x, y), w, h, fill=False, ec=REFERENCE_COLOUR, lw=2.4))
            if len(class_names) > 1:  # the true class, beneath the box's lower edge
                _tag(ax, x, y + h, name(gt_labels[i]), REFERENCE_COLOUR, "black", origin)
        for i, (x, y, w, h) in _rectangles(boxes, fixed, k):
            ax.add_patch(Rectangle((x, y), w, h, fill=False, ec=PREDICTION_COLOUR, lw=1.2))
            text = f"{name(labels[i])} {shown_scores[i]:.2f}"
            _tag(ax, x, y, text, PREDICTION_COLOUR, "white", "lower" if origin == "upper" else "")
        ax.set_xticks([])
        ax.set_yticks([])
        if label:
            ax.set_title(label, fontsize="small")
    return finish_overlay(fig, title, "ground truth", "prediction (score ≥ 0.3)")


def _tag(ax: Any, x: float, y: float, text: str, colour: str, ink: str, origin: str) -> None:
    """``text`` on a ``colour`` label at ``(x, y)``: above the point on screen where ``origin``
    is ``"lower"`` (y grows downwards), beneath it otherwise."""
    box = {"fc": colour, "ec": "none", "pad": 0.6, "alpha": 0.8}
    va = "bottom" if origin == "lower" else "top"
    ax.text(x, y, text, color=ink, fontsize=6, va=va, ha="left", clip_on=True, bbox=box)


def write_detection_report(
    folder: Path,
    result: Mapping[str, Any],
    cases: Sequence[Any],
    detections: Sequence[Mapping[str, Any]],
    run: Any = None,
) -> Path:
    """Write ``report.html`` (and ``overlay-<role>.png``) into ``folder``; returns the page.

    ``result`` is :func:`~medlens.tasks.detection.train.score_cases`' with ``class_names``,
    ``detections`` its per-case boxes, scores and labels on the plan's grid; ``run`` (a
    :class:`~medlens.tasks.detection.predict.DetectionRun`, optional) gives the summary and the
    learning curves of ``fold-0/history.jsonl``.
    """
    from medlens._atomic import atomic_write_bytes, atomic_write_text, safe_name
    from medlens.report.page import figure, html_page, section

    folder = Path(folder)
    names = list(result.get("class_names") or [])
    scores = image_scores(cases, detections)
    ranked = rank_images(scores)
    figures, roles = [], {}
    for role, i in ranked:
        case, det, row = cases[i], detections[i], scores[i]
        roles[row["id"]] = role
        n = np.asarray(case.image).ndim - 1
        spacing = case.meta.get("grid_spacing")
        png = detection_figure(
            case.image,
            (case.boxes, case.labels),
            det,
            class_names=names,
            spacing=spacing,
            point=_point(case, det, n),
            title=f"{role}: {row['id']} (F1 {row['f1']:.2f})",
        )
        atomic_write_bytes(folder / f"{safe_name('overlay-' + role)}.png", png)
        caption = (
            f"The {role} image by F1 at IoU 0.5: {row['id']} (F1 {row['f1']:.3f}, "
            f"{row['tp']} found, {row['fp']} false, {row['fn']} missed)."
        )
        figures.append(figure(png, f"Overlay of the {role} image {row['id']}", caption))
    intro = (
        "<p>Ground-truth boxes in amber, predicted boxes scoring at least 0.3 in azure with their "
        "class and score, on the plan's grid. Images are ranked by F1 at IoU 0.5 of the "
        "detections scoring at least 0.5. 3D volumes show the axial, coronal and sagittal planes "
        "through the highest-scoring detection shown (else the first finding) and each box's "
        "section by them.</p>"
    )
    sections = [
        section("summary", "Summary", _summary(result, run)),
        section("metrics", "Metrics", _metrics(result, names)),
        section("froc", "FROC", _froc(result["froc"])),
        section("counts", "Counting", _counts(result, names)),
        section(
            "examples",
            "Best, median and worst images",
            f'{intro}<div class="figs">{"".join(figures)}</div>',
        ),
    ]
    if "localisation" in result:  # one box per structure (boxes from label maps)
        body = _localisation(result["localisation"], names)
        sections.insert(2, section("localisation", "Localisation", body))
    curves = _curves(run)
    if curves:
        sections.append(section("training", "Training", curves))
    sections.append(section("images", "Per image", _images(result, scores, roles, names)))
    if run is not None:
        text = json.dumps(
            {"run": getattr(run, "info", {}), "plan": _plan(run)}, indent=2, default=str
        )
        body = f"<details><summary>Run and plan (JSON)</summary><pre>{_esc(text)}</pre></details>"
        sections.append(section("config", "Configuration", body))
    info = getattr(run, "info", None) or {}
    name = info.get("data", {}).get("name") or (run.path.name if run is not None else "detection")
    page = html_page(f"{name}: detection evaluation", sections, "Detection report")
    path = folder / "report.html"
    atomic_write_text(path, page)
    return path
