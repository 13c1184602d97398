"""Detection metrics: COCO average precision (2D and 3D), LUNA16 FROC and count errors.

Conventions, chosen so that a reported number means one thing:

* Boxes are ``(N, 2 * ndim)`` ``(x_min, y_min[, z_min], x_max, y_max[, z_max])`` in continuous
  coordinates (:mod:`medlens.boxes`); a box's area is ``(x_max - x_min) * (y_max - y_min)``
  (volume in 3D), without the legacy ``+ 1`` of pixel-index conventions. It equals
  pycocotools' ``w * h`` for ``bbox`` evaluation, so :func:`average_precision` reproduces
  ``COCOeval`` (area range ``all``, the largest ``maxDets``) on 2D boxes exactly, and applies the
  same rules to 3D boxes with 3D IoU.
* AP follows ``COCOeval.evaluateImg`` and ``accumulate``: per image and class the ``max_dets``
  best detections (per image *and class*, as pycocotools applies ``maxDets``; stable order on
  ties) are matched greedily, by decreasing score, to the unmatched box of highest IoU
  ``>= t``. A ground-truth box flagged ``ignore`` (VOC "difficult", COCO crowd) is matched only
  when no regular box qualifies; a detection matched to it is neither a true nor a false
  positive, and it may absorb several detections (pycocotools' crowd rule, but with IoU rather
  than pycocotools' intersection over the detection's area). Precision is made monotone and
  read at the 101 recall points ``0, 0.01, ..., 1``; AP is their mean. A class without
  (non-ignored) ground truth has AP NaN and is left out of the means (pycocotools' -1).
* FROC follows the LUNA16 evaluation (``noduleCADEvaluationLUNA16.py``): a candidate hits a
  finding when its centre is within the finding's radius (distance ``<= radius``). A finding
  counts once, with the best score of its hits; a candidate hitting a finding is never a false
  positive; a candidate inside an ignore region ("irrelevant finding") and hitting no finding is
  left out. The curve runs over every distinct score threshold: false positives per scan against
  the fraction of findings detected; sensitivities at the FP rates are read off it by linear
  interpolation (``numpy.interp``, as LUNA16; beyond the last point it stays at the maximum
  sensitivity), and the CPM is their mean. Unlike LUNA16, a candidate within two findings hits
  both (LUNA16 credits the first listed only).
* Bootstrap intervals resample images (AP) or scans (FROC) with replacement, seeded; they are
  95% percentile intervals (``alpha=0.05``) over the resamples with a defined value.
* Undefined values are NaN in the returned dicts (``medlens.metrics.classification._jsonable``
  turns them into None for strict JSON).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from medlens.metrics import _detection_match as dm
from medlens.metrics._batch import nanmean
from medlens.metrics._bootstrap import percentile_interval
from medlens.metrics._inputs import MetricInputError, to_numpy

__all__ = [
    "COCO_IOUS",
    "LUNA16_FP_RATES",
    "average_precision",
    "count_error",
    "detection_counts",
    "froc",
]

COCO_IOUS: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.5, 0.95, 10))
"""pycocotools' IoU thresholds ``0.5, 0.55, ..., 0.95`` (the same floating-point values)."""

LUNA16_FP_RATES: tuple[float, ...] = (1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8)
"""Average false positives per scan at which LUNA16 reads the sensitivity."""

_ALPHA = 0.05


# ---------------------------------------------------------------------------- average precision


def average_precision(
    detections: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    *,
    iou_thresholds: Iterable[float] = COCO_IOUS,
    classes: Iterable[Any] | None = None,
    max_dets: int = 100,
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """COCO-style mean average precision of 2D or 3D boxes, optionally with bootstrap intervals.

    Args:
        detections: one dict per image: ``boxes`` ``(N, 4)`` or ``(N, 6)``, ``scores`` ``(N,)``
            and ``labels`` ``(N,)`` (optional: all class 0). NumPy arrays, lists or tensors.
        ground_truth: one dict per image, in the same order: ``boxes``, ``labels`` (optional)
            and ``ignore`` (optional ``(M,)`` booleans; see the module docstring).
        iou_thresholds: IoU thresholds averaged into ``map50_95``; ``map50`` / ``map75`` are
            the AP at 0.5 / 0.75 and NaN if those thresholds are not among them.
        classes: the labels to score; None = every label in either input (sorted).
        max_dets: detections kept per image and class (highest scores).
        n_boot: bootstrap resamples of the images for intervals of ``map50`` and ``map50_95``
            (0 = none: the ``*_ci`` entries are None).
        seed: seed of the resampling.

    Returns:
        ``map50``, ``map75``, ``map50_95`` (means over classes with ground truth),
        ``ap50_per_class``, ``ap75_per_class``, ``ap50_95_per_class`` (``str(label)`` -> AP, NaN
        for a class without ground truth), ``n_gt_per_class`` (non-ignored boxes),
        ``n_det_per_class``, ``n_images``, ``iou_thresholds``, ``max_dets``, ``n_boot`` and
        ``map50_ci``, ``map50_95_ci`` (``[low, high]`` or None).
    """
    thresholds = np.asarray([float(t) for t in iou_thresholds], dtype=np.float64)
    if thresholds.size == 0 or np.any((thresholds < 0) | (thresholds > 1)):
        raise MetricInputError(f"iou_thresholds must be values in [0, 1], got {thresholds}")
    if int(max_dets) != max_dets or max_dets < 1:
        raise MetricInputError(f"max_dets must be a positive integer, got {max_dets}")
    _check_n_boot(n_boot)
    dets, gts = _box_inputs(detections, ground_truth)
    all_labels = [d[2] for d in dets] + [g[1] for g in gts]
    cls_list = _sorted_labels(all_labels) if classes is None else list(classes)
    matches = dm.match_classes(dets, gts, cls_list, thresholds, int(max_dets))
    n_img = len(dets)
    ap = dm.ap_table(matches, np.ones((1, n_img)))[0] if matches else np.zeros((0, thresholds.size))
    at50, at75 = _index_of(thresholds, 0.5), _index_of(thresholds, 0.75)
    names = [_name(c) for c in cls_list]

    def per_class(values: np.ndarray) -> dict[str, float]:
        return {name: float(v) for name, v in zip(names, values, strict=True)}

    nan_col = np.full(len(cls_list), np.nan)
    ap50 = ap[:, at50] if at50 is not None else nan_col
    ap75 = ap[:, at75] if at75 is not None else nan_col
    ap_all = ap.mean(axis=1) if len(cls_list) else nan_col
    out: dict[str, Any] = {
        "map50": _mean(ap50),
        "map75": _mean(ap75),
        "map50_95": _mean(ap_all),
        "ap50_per_class": per_class(ap50),
        "ap75_per_class": per_class(ap75),
        "ap50_95_per_class": per_class(ap_all),
        "n_gt_per_class": {n: int(m.n_gt.sum()) for n, m in zip(names, matches, strict=True)},
        "n_det_per_class": {n: int(m.image.size) for n, m in zip(names, matches, strict=True)},
        "n_images": n_img,
        "iou_thresholds": [float(t) for t in thresholds],
        "max_dets": int(max_dets),
        "n_boot": int(n_boot),
        "map50_ci": None,
        "map50_95_ci": None,
    }
    if n_boot and n_img and cls_list:
        weights = dm.resample_weights(np.random.default_rng(seed), n_img, int(n_boot))
        boot = dm.ap_table(matches, weights)  # (B, K, T)
        if at50 is not None:
            out["map50_ci"] = _interval(nanmean(boot[:, :, at50], axis=1))
        out["map50_95_ci"] = _interval(nanmean(boot.mean(axis=2), axis=1))
    return out


def _box_inputs(detections: Any, ground_truth: Any) -> tuple[list, list]:
    """Validated ``(boxes, scores, labels)`` and ``(boxes, labels, ignore)`` per image."""
    det_recs = dm.records(detections, "detections")
    gt_recs = dm.records(ground_truth, "ground_truth")
    if len(det_recs) != len(gt_recs):
        raise MetricInputError(
            f"{len(det_recs)} detection records for {len(gt_recs)} ground-truth records: "
            "give one of each per image, in the same order"
        )
    n = dm.width(det_recs + gt_recs, "boxes", (4, 6))
    dets, gts = [], []
    for i, rec in enumerate(det_recs):
        where = f"detections[{i}]"
        boxes = dm.vectors(rec, "boxes", where, n)
        k = boxes.shape[0]
        scores = dm.column(dm.field(rec, "scores", where), k, f"{where}['scores']")
        scores = scores.astype(np.float64)
        if not np.all(np.isfinite(scores)):
            raise MetricInputError(f"{where}['scores'] holds NaN or infinite values")
        labels = dm.column(dm.field(rec, "labels", where, np.zeros(k, np.int64)), k, where)
        dets.append((boxes, scores, labels))
    for i, rec in enumerate(gt_recs):
        where = f"ground_truth[{i}]"
        boxes = dm.vectors(rec, "boxes", where, n)
        k = boxes.shape[0]
        labels = dm.column(dm.field(rec, "labels", where, np.zeros(k, np.int64)), k, where)
        ignore = dm.column(dm.field(rec, "ignore", where, np.zeros(k, bool)), k, where)
        gts.append((boxes, labels, ignore.astype(bool)))
    return dets, gts


def _sorted_labels(arrays: list[np.ndarray]) -> list[Any]:
    """The distinct labels of all arrays, sorted, as plain Python values."""
    parts = [a for a in arrays if a.size]
    labels = np.unique(np.concatenate(parts)) if parts else []
    return [v.item() if isinstance(v, np.generic) else v for v in labels]


def _name(label: Any) -> str:
    if isinstance(label, (float, np.floating)) and float(label).is_integer():
        label = int(label)
    return str(label.item() if isinstance(label, np.generic) else label)


def _index_of(thresholds: np.ndarray, value: float) -> int | None:
    hit = np.flatnonzero(np.isclose(thresholds, value, rtol=0.0, atol=1e-9))
    return int(hit[0]) if hit.size else None


def _mean(values: np.ndarray) -> float:
    ok = values[~np.isnan(values)]
    return float(ok.mean()) if ok.size else math.nan


def _interval(values: np.ndarray) -> list[float] | None:
    low, high, n = percentile_interval(np.asarray(values, dtype=np.float64), _ALPHA)
    return [low, high] if n else None


def _check_n_boot(n_boot: int) -> None:
    if int(n_boot) != n_boot or n_boot < 0:
        raise MetricInputError(f"n_boot must be an integer >= 0, got {n_boot}")


# ---------------------------------------------------------------------------- FROC


def froc(
    detections: Sequence[Mapping[str, Any]],
    findings: Sequence[Mapping[str, Any]],
    *,
    fp_rates: Iterable[float] = LUNA16_FP_RATES,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Free-response ROC by the LUNA16 rules, with the CPM and bootstrap intervals over scans.

    Args:
        detections: one dict per scan: ``centres`` ``(N, n)`` (mm, or any unit shared with the
            findings) and ``scores`` ``(N,)``.
        findings: one dict per scan, same order: ``centres`` ``(M, n)``, ``radii`` ``(M,)``
            (half the diameter) and optionally ``ignore_centres`` ``(K, n)`` with
            ``ignore_radii`` ``(K,)``: regions whose candidates are neither hits nor FPs.
        fp_rates: average false positives per scan at which to read the sensitivity.
        n_boot: resamples of the scans for the intervals (0 = none: the intervals are None).
        seed: seed of the resampling.

    Returns:
        ``cpm`` (mean sensitivity at ``fp_rates``), ``cpm_ci`` ``[low, high]``,
        ``sensitivity_at`` and ``sensitivity_ci`` (keyed by ``f"{rate:g}"``: ``"0.125"``, ...,
        ``"8"``), ``fp_rates``, ``curve`` (``fp_per_scan``, ``sensitivity``; at most 200
        points), ``n_scans``, ``n_findings``, ``n_detected``, ``max_sensitivity`` (findings hit
        at any threshold) and ``n_boot``.
    """
    rates = np.asarray([float(r) for r in fp_rates], dtype=np.float64)
    if rates.size == 0 or np.any(~np.isfinite(rates) | (rates < 0)):
        raise MetricInputError(f"fp_rates must be non-negative numbers, got {rates}")
    _check_n_boot(n_boot)
    det_recs = dm.records(detections, "detections")
    find_recs = dm.records(findings, "findings")
    if len(det_recs) != len(find_recs):
        raise MetricInputError(
            f"{len(det_recs)} detection records for {len(find_recs)} finding records: "
            "give one of each per scan, in the same order"
        )
    if not det_recs:
        raise MetricInputError("FROC needs at least one scan")
    per_scan, n_find = [], np.zeros(len(det_recs), dtype=np.int64)
    for i, (det, fin) in enumerate(zip(det_recs, find_recs, strict=True)):
        per_scan.append(_froc_scan(det, fin, i))
        n_find[i] = dm.vectors(fin, "centres", f"findings[{i}]").shape[0]
    entries = dm.froc_entries(per_scan, n_find)
    n_scans = len(det_recs)
    fps, sens = dm.froc_curves(entries, np.ones((1, n_scans)))
    at = dm.froc_sensitivities(entries, np.ones((1, n_scans)), rates)[0]
    keys = [f"{r:g}" for r in rates]
    x, y = dm.downsample(fps[0], sens[0])
    out: dict[str, Any] = {
        "cpm": float(at.mean()),
        "cpm_ci": None,
        "sensitivity_at": {k: float(v) for k, v in zip(keys, at, strict=True)},
        "sensitivity_ci": {k: None for k in keys},
        "fp_rates": [float(r) for r in rates],
        "curve": {"fp_per_scan": x, "sensitivity": y},
        "n_scans": n_scans,
        "n_findings": int(n_find.sum()),
        "n_detected": int(sum(f.size for f, _ in per_scan)),
        "max_sensitivity": float(sens[0, -1]),
        "n_boot": int(n_boot),
    }
    if n_boot:
        weights = dm.resample_weights(np.random.default_rng(seed), n_scans, int(n_boot))
        boot = dm.froc_sensitivities(entries, weights, rates)  # (B, R)
        out["cpm_ci"] = _interval(boot.mean(axis=1))
        out["sensitivity_ci"] = {k: _interval(boot[:, j]) for j, k in enumerate(keys)}
    return out


def _froc_scan(
    det: Mapping[str, Any], fin: Mapping[str, Any], i: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validated inputs of scan ``i`` -> (best hit score per detected finding, FP scores)."""
    where_d, where_f = f"detections[{i}]", f"findings[{i}]"
    centres = dm.vectors(det, "centres", where_d)
    scores = dm.column(dm.field(det, "scores", where_d), centres.shape[0], f"{where_d}['scores']")
    scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise MetricInputError(f"{where_d}['scores'] holds NaN or infinite values")
    found = dm.vectors(fin, "centres", where_f)
    radii = _radii(fin, "radii", found.shape[0], where_f)
    empty = np.zeros((0, centres.shape[1] or found.shape[1]))
    ignore = dm.vectors(fin, "ignore_centres", where_f) if "ignore_centres" in fin else empty
    ignore_radii = _radii(fin, "ignore_radii", ignore.shape[0], where_f)
    return dm.froc_scan(centres, scores, found, radii, ignore, ignore_radii)


def _radii(rec: Mapping[str, Any], key: str, n: int, where: str) -> np.ndarray:
    if key not in rec and n == 0:
        return np.zeros(0)
    r = dm.column(dm.field(rec, key, where), n, f"{where}[{key!r}]").astype(np.float64)
    if not np.all(np.isfinite(r) & (r >= 0)):
        raise MetricInputError(f"{where}[{key!r}] must be finite and non-negative")
    return r


# ---------------------------------------------------------------------------- counting


def detection_counts(
    detections: Sequence[Mapping[str, Any]],
    *,
    score_threshold: float | None,
    classes: Iterable[Any] | None = None,
) -> list[dict[Any, int]]:
    """Objects per image and class: detections scoring ``>= score_threshold``.

    ``score_threshold=None`` counts every box (for ground-truth records, which have no scores).
    Every returned dict has the same keys: ``classes``, or every label seen in any record.
    Records without ``labels`` count as class 0.
    """
    recs = dm.records(detections, "detections")
    per_image = []
    for i, rec in enumerate(recs):
        where = f"detections[{i}]"
        key = "boxes" if "boxes" in rec else "centres"
        n = dm.vectors(rec, key, where).shape[0] if key in rec else None
        if n is None:
            n = dm.field(rec, "scores", where).size
        labels = dm.column(dm.field(rec, "labels", where, np.zeros(n, np.int64)), n, where)
        if score_threshold is not None:
            scores = dm.column(dm.field(rec, "scores", where), n, f"{where}['scores']")
            labels = labels[scores.astype(np.float64) >= score_threshold]
        per_image.append(labels)
    keys = _sorted_labels(per_image) if classes is None else list(classes)
    return [{k: int(np.count_nonzero(labels == k)) for k in keys} for labels in per_image]


def count_error(
    pred_counts: Any, true_counts: Any, *, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Per-class errors of predicted object counts (cell counting), and their class means.

    Args:
        pred_counts, true_counts: one dict ``class -> count`` per image (a class missing from an
            image's dict counts 0; e.g. from :func:`detection_counts`), or arrays
            ``(images, classes)`` (``(images,)`` for one class).
        class_names: names of the array columns (default ``"0"``, ``"1"``, ...).

    Returns:
        ``per_class``: ``name -> {"mae", "mean_error", "relative_error", "total_pred",
        "total_true"}`` where ``mean_error`` is the mean of ``pred - true`` (positive =
        over-counting) and ``relative_error`` is ``sum |pred - true| / sum true`` (the MAE over
        the mean true count; NaN when no object is present); ``mae``, ``mean_error`` and
        ``relative_error`` averaged over classes (NaN left out); ``n_images``.
    """
    if _is_dicts(pred_counts) or _is_dicts(true_counts):
        keys = sorted({k for c in (*pred_counts, *true_counts) for k in c}, key=_label_key)
        pred = _dict_table(pred_counts, keys, "pred_counts")
        true = _dict_table(true_counts, keys, "true_counts")
        names = [_name(k) for k in keys]
    else:
        pred, true = (
            _array_table(pred_counts, "pred_counts"),
            _array_table(true_counts, "true_counts"),
        )
        if class_names is not None:
            names = [str(n) for n in class_names]
        else:
            names = [str(j) for j in range(pred.shape[1])]
        if len(names) != pred.shape[1]:
            raise MetricInputError(f"{len(names)} class names for {pred.shape[1]} columns")
    if pred.shape != true.shape:
        raise MetricInputError(
            f"pred_counts {pred.shape} and true_counts {true.shape} do not cover the same "
            "images and classes"
        )
    err = pred - true
    n_img = pred.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = np.abs(err).mean(axis=0) if n_img else np.full(len(names), np.nan)
        signed = err.mean(axis=0) if n_img else np.full(len(names), np.nan)
        total_true = true.sum(axis=0)
        rel = np.where(total_true > 0, np.abs(err).sum(axis=0) / total_true, np.nan)
    per_class = {
        name: {
            "mae": float(mae[j]),
            "mean_error": float(signed[j]),
            "relative_error": float(rel[j]),
            "total_pred": float(pred[:, j].sum()),
            "total_true": float(total_true[j]),
        }
        for j, name in enumerate(names)
    }
    return {
        "per_class": per_class,
        "mae": _mean(mae),
        "mean_error": _mean(signed),
        "relative_error": _mean(rel),
        "n_images": int(n_img),
    }


def _label_key(label: Any) -> tuple[int, Any]:
    return (0, label) if isinstance(label, (int, float, np.number)) else (1, str(label))


def _is_dicts(counts: Any) -> bool:
    return isinstance(counts, Sequence) and len(counts) > 0 and isinstance(counts[0], Mapping)


def _dict_table(counts: Any, keys: list[Any], what: str) -> np.ndarray:
    """``(images, classes)`` float64 counts from one ``class -> count`` dict per image."""
    if not isinstance(counts, Sequence) or not all(isinstance(c, Mapping) for c in counts):
        raise MetricInputError(f"{what} must be a list of dicts, like the other counts")
    table = np.array([[float(c.get(k, 0)) for k in keys] for c in counts], dtype=np.float64)
    return _finite(table.reshape(len(counts), len(keys)), what)


def _array_table(counts: Any, what: str) -> np.ndarray:
    """``(images, classes)`` float64 counts from an array (``(images,)`` is one class)."""
    table = np.asarray(to_numpy(counts), dtype=np.float64)
    table = table[:, None] if table.ndim == 1 else table
    if table.ndim != 2:
        raise MetricInputError(f"{what} must be (images, classes), got shape {table.shape}")
    return _finite(table, what)


def _finite(table: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(table)):
        raise MetricInputError(f"{what} holds NaN or infinite counts")
    return table
