"""Matching and curve arithmetic behind :mod:`medlens.metrics.detection` (private).

Matching is done once per image; what a resample of images changes is only how often each
image counts. So every curve here takes ``weights`` ``(B, n_images)`` (how many times each image
is drawn; one row of ones is the data itself) and computes all ``B`` curves with cumulative sums
over one global score order. A weight of ``c`` counts an image's detections and findings ``c``
times; the result is that of the resampled data set, except for the order of exactly tied scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medlens.metrics._inputs import MetricInputError, to_numpy

RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # pycocotools' recThrs
_CHUNK_ELEMENTS = 2_000_000  # resample rows x entries per chunk: bounds memory at ~100 MB


# ---------------------------------------------------------------------------- inputs


def records(items: Any, name: str) -> list[Mapping[str, Any]]:
    """``items`` as a list of per-image mappings (a single mapping is refused, being ambiguous)."""
    if isinstance(items, Mapping) or not isinstance(items, Sequence):
        raise MetricInputError(f"{name} must be a list with one dict per image")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise MetricInputError(f"{name}[{i}] is {type(item).__name__}, not a dict")
    return list(items)


def field(record: Mapping[str, Any], key: str, where: str, default: Any = None) -> np.ndarray:
    """One array of a record, as NumPy (torch tensors on any device are accepted); a missing
    key gives ``default``, or an error when there is none."""
    if key not in record:
        if default is None:
            raise MetricInputError(f"{where} has no {key!r}")
        return default
    return np.asarray(to_numpy(record[key]))


def vectors(record: Mapping[str, Any], key: str, where: str, n: int | None = None) -> np.ndarray:
    """A ``(N, k)`` float64 array of boxes or points; empty arrays of any shape are ``(0, k)``."""
    a = field(record, key, where).astype(np.float64)
    if a.size == 0:
        return a.reshape(0, n or 0)
    if a.ndim != 2 or (n is not None and a.shape[1] != n):
        want = f"(N, {n})" if n is not None else "(N, k)"
        raise MetricInputError(f"{where}[{key!r}] must be {want}, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise MetricInputError(f"{where}[{key!r}] holds NaN or infinite values")
    return a


def column(a: np.ndarray, n: int, what: str) -> np.ndarray:
    """A flat array that must have ``n`` entries (one per box or point)."""
    a = np.asarray(a).reshape(-1)
    if a.size != n:
        raise MetricInputError(f"{what} has {a.size} entries for {n} boxes or points")
    return a


def width(recs: Sequence[Mapping[str, Any]], key: str, allowed: tuple[int, ...]) -> int:
    """The common column count of ``key`` over all records (the first non-empty one decides)."""
    for i, rec in enumerate(recs):
        a = field(rec, key, f"record {i}")
        if a.size:
            if a.ndim != 2 or a.shape[1] not in allowed:
                raise MetricInputError(
                    f"record {i}[{key!r}] must have {' or '.join(map(str, allowed))} columns, "
                    f"got shape {a.shape}"
                )
            return int(a.shape[1])
    return allowed[0]


# ---------------------------------------------------------------------------- AP matching


@dataclass(frozen=True)
class ClassMatches:
    """One class's detections over all images, in pycocotools' global score order.

    Attributes:
        image: ``(D,)`` image index of each detection.
        tp, fp: ``(T, D)`` per IoU threshold; a detection matched to an ignored box is neither.
        n_gt: ``(n_images,)`` non-ignored ground-truth boxes per image.
    """

    image: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_gt: np.ndarray


def match_image(
    ious: np.ndarray, ignore: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' greedy matching of one image and class, all IoU thresholds at once.

    Detections (rows of ``ious``) come by decreasing score. Each takes the still unmatched
    non-ignored box of highest IoU ``>= t`` (the last one on ties, as pycocotools); failing that,
    any ignored box with IoU ``>= t`` makes it ignored (ignored boxes may absorb several).

    Returns:
        ``tp``, ``fp``: ``(T, D)`` booleans.
    """
    n_det, n_box = ious.shape
    n_thr = thresholds.size
    tp = np.zeros((n_thr, n_det), dtype=bool)
    ignored = np.zeros((n_thr, n_det), dtype=bool)
    if n_box:
        regular, crowd = ious[:, ~ignore], ious[:, ignore]
        thr = np.minimum(thresholds, 1.0 - 1e-10)[:, None]
        taken = np.zeros((n_thr, regular.shape[1]), dtype=bool)
        rows = np.arange(n_thr)
        for d in range(n_det):
            ok = (regular[d] >= thr) & ~taken
            hit = ok.any(axis=1)
            if hit.any():
                vals = np.where(ok, regular[d], -1.0)[:, ::-1]
                best = regular.shape[1] - 1 - np.argmax(vals, axis=1)
                taken[rows[hit], best[hit]] = True
                tp[hit, d] = True
            if crowd.shape[1]:
                ignored[:, d] = ~hit & (crowd[d] >= thr).any(axis=1)
    return tp, ~tp & ~ignored


def match_classes(
    dets: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    gts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    classes: list[Any],
    thresholds: np.ndarray,
    max_dets: int,
) -> list[ClassMatches]:
    """Match every image and class; ``dets`` hold (boxes, scores, labels), ``gts`` hold
    (boxes, labels, ignore). Keeps the ``max_dets`` best detections per image and class."""
    from medlens.boxes import box_iou

    n_img, n_thr = len(dets), thresholds.size
    out = []
    for cls in classes:
        scores, image, tps, fps = [], [], [], []
        n_gt = np.zeros(n_img, dtype=np.int64)
        for i, ((d_box, d_score, d_label), (g_box, g_label, g_ign)) in enumerate(
            zip(dets, gts, strict=True)
        ):
            keep = np.flatnonzero(d_label == cls)
            keep = keep[np.argsort(-d_score[keep], kind="mergesort")][:max_dets]
            in_cls = g_label == cls
            box, ign = g_box[in_cls], g_ign[in_cls]
            n_gt[i] = int((~ign).sum())
            if keep.size == 0:
                continue
            ious = box_iou(d_box[keep], box) if box.shape[0] else np.zeros((keep.size, 0))
            tp, fp = match_image(np.asarray(ious, dtype=np.float64), ign, thresholds)
            scores.append(d_score[keep])
            image.append(np.full(keep.size, i))
            tps.append(tp)
            fps.append(fp)
        if scores:
            s = np.concatenate(scores)
            order = np.argsort(-s, kind="mergesort")
            img = np.concatenate(image)[order]
            tp_all = np.concatenate(tps, axis=1)[:, order]
            fp_all = np.concatenate(fps, axis=1)[:, order]
        else:
            img = np.zeros(0, dtype=np.int64)
            tp_all = fp_all = np.zeros((n_thr, 0), dtype=bool)
        out.append(ClassMatches(img, tp_all, fp_all, n_gt))
    return out


def precision_table(m: ClassMatches, weights: np.ndarray) -> np.ndarray:
    """Interpolated precision ``(B, T, 101)`` at pycocotools' recall points, one row per weight row.

    Precision is made monotone (the maximum at any higher recall) and read at the first point
    whose recall reaches each recall threshold (0 beyond the last recall). NaN where the weighted
    data hold no non-ignored ground truth of the class.
    """
    n_b, n_thr, n_rec = weights.shape[0], m.tp.shape[0], RECALL_POINTS.size
    npig = weights @ m.n_gt
    out = np.full((n_b, n_thr, n_rec), np.nan)
    has = np.flatnonzero(npig > 0)
    out[has] = 0.0
    n_det = m.image.size
    if n_det == 0 or has.size == 0:
        return out
    w = weights[has][:, m.image]
    denom = npig[has][:, None]
    for t in range(n_thr):
        tp_sum = np.cumsum(w * m.tp[t], axis=1)
        fp_sum = np.cumsum(w * m.fp[t], axis=1)
        recall = tp_sum / denom
        precision = tp_sum / (fp_sum + tp_sum + np.spacing(1))
        precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        for j, b in enumerate(has):
            idx = np.searchsorted(recall[j], RECALL_POINTS, side="left")
            inside = idx < n_det
            out[b, t, inside] = precision[j, idx[inside]]
    return out


def ap_table(matches: list[ClassMatches], weights: np.ndarray) -> np.ndarray:
    """AP ``(B, K, T)`` of every class and IoU threshold, computed in chunks of weight rows."""
    n_det = max([m.image.size for m in matches] + [1])
    step = max(1, _CHUNK_ELEMENTS // n_det)
    parts = []
    for start in range(0, weights.shape[0], step):
        w = weights[start : start + step]
        parts.append(np.stack([precision_table(m, w).mean(axis=-1) for m in matches], axis=1))
    return np.concatenate(parts, axis=0)


def resample_weights(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``(size, n)`` draw counts of ``n`` items resampled with replacement ``size`` times."""
    idx = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
    return np.bincount(idx.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)


# ---------------------------------------------------------------------------- FROC


def froc_scan(
    centres: np.ndarray,
    scores: np.ndarray,
    findings: np.ndarray,
    radii: np.ndarray,
    ignore: np.ndarray,
    ignore_radii: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One scan's FROC entries: the best hit score of each detected finding, and the scores of
    the false positives (candidates hitting no finding and no ignore region)."""
    hits = _within(centres, findings, radii)
    found = hits.any(axis=0)
    best = np.where(hits, scores[:, None], -np.inf).max(axis=0, initial=-np.inf)[found]
    free = ~hits.any(axis=1) & ~_within(centres, ignore, ignore_radii).any(axis=1)
    return best, scores[free]


def _within(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """``(N, M)``: point ``n`` lies within distance ``radii[m]`` of centre ``m``."""
    if points.shape[0] == 0 or centres.shape[0] == 0:
        return np.zeros((points.shape[0], centres.shape[0]), dtype=bool)
    if points.shape[1] != centres.shape[1]:
        raise MetricInputError(
            f"candidate centres have {points.shape[1]} coordinates, findings {centres.shape[1]}"
        )
    dist = np.sqrt(((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1))
    return dist <= radii[None, :]


@dataclass(frozen=True)
class FrocEntries:
    """All scans' FROC entries in one decreasing score order (LUNA16's ROC input).

    Attributes:
        scan: ``(E,)`` scan of each entry; ``hit``: ``(E,)`` True for a detected finding, False
            for a false positive; ``ends``: the last entry of each group of tied scores;
        n_findings: ``(S,)`` findings per scan (detected or not).
    """

    scan: np.ndarray
    hit: np.ndarray
    ends: np.ndarray
    n_findings: np.ndarray


def froc_entries(
    per_scan: list[tuple[np.ndarray, np.ndarray]], n_findings: np.ndarray
) -> FrocEntries:
    """Gather ``(found scores, false positive scores)`` of every scan into :class:`FrocEntries`."""
    scores = np.concatenate([np.r_[f, p] for f, p in per_scan] + [np.zeros(0)])
    hit = np.concatenate(
        [np.r_[np.ones(f.size, bool), np.zeros(p.size, bool)] for f, p in per_scan]
        + [np.zeros(0, bool)]
    )
    scan = np.concatenate(
        [np.full(f.size + p.size, i) for i, (f, p) in enumerate(per_scan)] + [np.zeros(0, np.int64)]
    )
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1] if s.size else np.zeros(0, int)
    return FrocEntries(scan[order], hit[order], ends.astype(np.int64), n_findings)


def froc_curves(e: FrocEntries, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FROC points ``(B, P)``: false positives per scan and sensitivity at every distinct score
    threshold, from ``(0, 0)`` (nothing accepted) to all candidates accepted."""
    n_b, n_scans = weights.shape
    w = weights[:, e.scan]
    zero = np.zeros((n_b, 1))
    tp = np.c_[zero, np.cumsum(w * e.hit, axis=1)[:, e.ends]]
    fp = np.c_[zero, np.cumsum(w * ~e.hit, axis=1)[:, e.ends]]
    total = weights @ e.n_findings
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(total[:, None] > 0, tp / total[:, None], np.nan)
    return fp / n_scans, sens


def froc_sensitivities(e: FrocEntries, weights: np.ndarray, fp_rates: np.ndarray) -> np.ndarray:
    """Sensitivity ``(B, R)`` at each FP rate, linearly interpolated as LUNA16 does, in chunks."""
    step = max(1, _CHUNK_ELEMENTS // max(e.scan.size, 1))
    out = np.empty((weights.shape[0], fp_rates.size))
    for start in range(0, weights.shape[0], step):
        fps, sens = froc_curves(e, weights[start : start + step])
        for j in range(fps.shape[0]):
            out[start + j] = np.interp(fp_rates, fps[j], sens[j])
    return out


def downsample(x: np.ndarray, y: np.ndarray, n: int = 200) -> tuple[list[float], list[float]]:
    """At most ``n`` evenly spaced points of a curve, keeping its first and last."""
    if x.size > n:
        idx = np.unique(np.round(np.linspace(0, x.size - 1, n)).astype(np.int64))
        x, y = x[idx], y[idx]
    return [float(v) for v in x], [float(v) for v in y]
