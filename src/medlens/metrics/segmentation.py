"""Segmentation metrics: Dice, IoU, HD95, ASSD and normalised surface Dice, spacing-aware.

A functional core on NumPy arrays or torch tensors (:func:`dice`, :func:`iou`,
:func:`hausdorff95`, :func:`assd`, :func:`surface_dice` on one mask pair;
:func:`segmentation_metrics` on a whole label map) plus an accumulator for evaluation and
validation loops (:class:`SegmentationMetric`) whose output is JSON-ready.

Conventions, chosen so that a reported number means one thing:

* Arrays are C-order ``(H, W)`` or ``(D, H, W)`` label maps (integers; 0 = background), boolean
  masks, or one-hot arrays with a channel axis (``channel_axis=``, values > 0.5 are inside).
  ``spacing`` is in mm **in array axis order** (``(z, y, x)``), the reverse of
  :attr:`medlens.image.Image.spacing` (ITK order ``(x, y, z)``); :func:`array_spacing` converts,
  and passing an :class:`~medlens.image.Image` as ``spacing`` converts automatically.
* Surfaces are the mask voxels with a face neighbour (4-connected in 2D, 6-connected in 3D)
  outside the mask; outside the image counts as outside. Distances are exact Euclidean distances
  in mm between surface voxel centres (``scipy.ndimage.distance_transform_edt``).
* HD95 is MONAI's ``compute_hausdorff_distance(percentile=95)``: the larger of the two directed
  95th percentiles (prediction to reference, reference to prediction; linear interpolation), not
  the 95th percentile of the pooled distances. ASSD is the mean of all surface distances in both
  directions pooled (MONAI's ``compute_average_surface_distance(symmetric=True)``).
* NSD (normalised surface Dice, Nikolov et al. 2021) at tolerance tau mm is
  ``(#pred surface voxels within tau of the reference surface + #ref surface voxels within tau of
  the prediction surface) / (#pred + #ref surface voxels)``, with "within" meaning distance
  ``<= tau``. Surface voxels are counted, as MONAI's ``compute_surface_dice`` does with
  ``use_subvoxels=False``; the original DeepMind code weights surface elements by their area
  instead, which differs slightly on curved or anisotropic surfaces.
* Empty masks, following the Metrics Reloaded recommendations (Maier-Hein et al. 2024): when
  reference and prediction are both empty the prediction is perfect, so Dice = IoU = NSD = 1 and
  HD95 = ASSD = 0. When exactly one is empty, Dice = IoU = NSD = 0 (the worst value) and the
  distances are undefined: NaN with ``empty_distance="nan"`` (the default; left out of means and
  counted), or the image diagonal in mm with ``empty_distance="max"`` so that means penalise
  them. Every class of every case carries ``empty``: ``"none"``, ``"both"``, ``"reference"`` or
  ``"prediction"`` (which mask is empty), so reports can say what happened. MONAI differs here
  (NaN or inf for these cases); on non-empty masks the values agree with MONAI's to float32
  precision.
* Per-case class means ignore NaN. Aggregates over cases give mean, median, sample standard
  deviation (ddof=1), the counts of defined and NaN values and, with ``n_boot > 0``, a seeded
  percentile bootstrap interval of the mean over cases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from medlens.metrics._inputs import MetricInputError, to_numpy
from medlens.metrics._seg_inputs import (
    SpacingLike,
    array_spacing,
    as_spacing,
    binary_masks,
    check_empty_distance,
    check_tolerance,
    class_masks,
    class_name,
    class_tolerance,
    distance_if_empty,
    is_per_case_spacing,
    nanmean,
)
from medlens.metrics._seg_summary import aggregate_segmentation
from medlens.metrics._surface import (
    EMPTY_STATES,
    METRICS,
    directed_percentile_max,
    empty_state,
    pair_metrics,
    surface_distances,
)
from medlens.metrics.classification import _jsonable

__all__ = [
    "EMPTY_STATES",
    "SEGMENTATION_METRICS",
    "SegmentationMetric",
    "aggregate_segmentation",
    "array_spacing",
    "assd",
    "dice",
    "hausdorff95",
    "hausdorff_distance",
    "iou",
    "segmentation_metrics",
    "surface_dice",
]

SEGMENTATION_METRICS = METRICS
"""Metric names, in report order; the last three are surface metrics."""


# ---------------------------------------------------------------------------- one mask pair


def dice(pred: Any, ref: Any, label: int | None = None) -> float:
    """Dice coefficient ``2|P & R| / (|P| + |R|)``; 1 when both are empty.

    Args:
        pred, ref: boolean masks or label maps of the same shape (NumPy or torch).
        label: the class to compare in label maps; None treats every non-zero value as inside.
    """
    p, r = binary_masks(pred, ref, label)
    return float(pair_metrics(p, r, (), 0.0, distances=False)["dice"])


def iou(pred: Any, ref: Any, label: int | None = None) -> float:
    """Intersection over union (Jaccard) ``|P and R| / |P or R|``; 1 when both are empty."""
    p, r = binary_masks(pred, ref, label)
    return float(pair_metrics(p, r, (), 0.0, distances=False)["iou"])


def hausdorff_distance(
    pred: Any,
    ref: Any,
    spacing: SpacingLike = None,
    percentile: float = 95.0,
    label: int | None = None,
    empty_distance: str = "nan",
) -> float:
    """Percentile Hausdorff distance in mm: the larger of the two directed percentiles.

    ``percentile=100`` gives the classical (maximum) Hausdorff distance. Empty masks follow the
    module docstring (0 when both are empty; NaN or the image diagonal when one is).
    """
    if not 0.0 <= percentile <= 100.0:
        raise MetricInputError(f"percentile must be between 0 and 100, got {percentile}")
    empty_distance = check_empty_distance(empty_distance)
    p, r = binary_masks(pred, ref, label)
    sp = as_spacing(spacing, p.ndim)
    state = empty_state(bool(p.any()), bool(r.any()))
    if state != "none":
        return distance_if_empty(state, p.shape, sp, empty_distance)
    d_pred, d_ref = surface_distances(p, r, sp)
    return directed_percentile_max(d_pred, d_ref, percentile)


def hausdorff95(
    pred: Any,
    ref: Any,
    spacing: SpacingLike = None,
    label: int | None = None,
    empty_distance: str = "nan",
) -> float:
    """95th percentile Hausdorff distance in mm (MONAI's convention, see the module docstring)."""
    return hausdorff_distance(pred, ref, spacing, 95.0, label, empty_distance)


def assd(
    pred: Any,
    ref: Any,
    spacing: SpacingLike = None,
    label: int | None = None,
    empty_distance: str = "nan",
) -> float:
    """Average symmetric surface distance in mm: the mean of both directions' distances pooled."""
    p, r = binary_masks(pred, ref, label)
    sp = as_spacing(spacing, p.ndim)
    return float(pair_metrics(p, r, sp, 0.0, check_empty_distance(empty_distance))["assd"])


def surface_dice(
    pred: Any,
    ref: Any,
    spacing: SpacingLike = None,
    tolerance_mm: float = 1.0,
    label: int | None = None,
) -> float:
    """Normalised surface Dice: the fraction of both surfaces within ``tolerance_mm`` of the other.

    Choose the tolerance from the inter-rater variability of the structure; it is in mm, so it
    means the same at any resolution.
    """
    p, r = binary_masks(pred, ref, label)
    sp = as_spacing(spacing, p.ndim)
    return float(pair_metrics(p, r, sp, check_tolerance(tolerance_mm))["nsd"])


# ---------------------------------------------------------------------------- label maps


def segmentation_metrics(
    pred: Any,
    ref: Any,
    spacing: SpacingLike = None,
    labels: Iterable[int] | None = None,
    tolerance_mm: float | Mapping[int, float] = 1.0,
    include_background: bool = False,
    empty_distance: str = "nan",
    channel_axis: int | None = None,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    distances: bool = True,
) -> dict[str, Any]:
    """Every metric per class of one case, and their means over classes.

    Args:
        pred, ref: label maps ``([D,] H, W)`` (boolean masks count as label 1), or one-hot
            ``(C, [D,] H, W)`` arrays with ``channel_axis`` set (class index = channel index).
        spacing: mm per array axis (``(z, y, x)``), a number for isotropic voxels, an Image, or
            None for 1 mm.
        labels: the classes to score; None = every label present in either map (one-hot: every
            channel), without 0 unless ``include_background``. Pass ``labels`` when scoring many
            cases, so that a class missing from both maps of a case counts as a perfect
            "both empty" result instead of disappearing.
        tolerance_mm: NSD tolerance, one for all classes or one per label.
        include_background: whether the default ``labels`` include 0.
        empty_distance: ``"nan"`` or ``"max"``; see the module docstring.
        channel_axis: the class axis of one-hot inputs; None for label maps.
        class_names: names by label (mapping, or sequence indexed by label); default ``str(label)``.
        distances: False skips HD95, ASSD and NSD (Dice and IoU only, much faster).

    Returns:
        ``per_class`` (name -> ``label``, ``empty``, ``pred_voxels``, ``ref_voxels`` and each
        metric), ``mean`` (metric -> NaN-ignoring mean over classes), ``labels``, ``spacing``,
        ``shape``, ``tolerance_mm`` and ``empty_distance``. Floats may be NaN.
    """
    empty_distance = check_empty_distance(empty_distance)
    classes, shape = class_masks(pred, ref, labels, include_background, channel_axis)
    sp = as_spacing(spacing, len(shape))
    names = [class_name(label, class_names) for label, _, _ in classes]
    if len(set(names)) != len(names):
        raise MetricInputError(f"class names must be unique, got {names}")
    tolerances = {label: class_tolerance(tolerance_mm, label) for label, _, _ in classes}
    per_class = {}
    for name, (label, p, r) in zip(names, classes, strict=True):
        values = pair_metrics(p, r, sp, tolerances[label], empty_distance, distances, shape)
        per_class[name] = {"label": label, **values}
    metrics = SEGMENTATION_METRICS if distances else SEGMENTATION_METRICS[:2]
    mean = {m: nanmean([float(v[m]) for v in per_class.values()]) for m in metrics}
    return {
        "per_class": per_class,
        "mean": mean,
        "labels": [label for label, _, _ in classes],
        "spacing": list(sp),
        "shape": list(shape),
        "tolerance_mm": tolerance_mm if not isinstance(tolerance_mm, Mapping) else dict(tolerances),
        "empty_distance": empty_distance,
    }


class SegmentationMetric:
    """Scores cases one by one and aggregates them, e.g. for ``medlens evaluate``::

        metric = SegmentationMetric(labels=[1, 2], class_names={1: "liver", 2: "tumour"})
        for case_id, pred, ref, image in cases:
            metric.update(pred, ref, spacing=image, case_id=case_id)
        report = metric.compute()  # json.dumps(report, allow_nan=False) works

    Unlike classification metrics, segmentation metrics are per case, so each :meth:`update`
    scores its case at once and keeps only the numbers, not the masks. The constructor's
    arguments are :func:`segmentation_metrics`'s plus the bootstrap settings of :meth:`compute`.
    """

    def __init__(
        self,
        labels: Iterable[int] | None = None,
        tolerance_mm: float | Mapping[int, float] = 1.0,
        include_background: bool = False,
        empty_distance: str = "nan",
        channel_axis: int | None = None,
        class_names: Mapping[int, str] | Sequence[str] | None = None,
        distances: bool = True,
        n_boot: int = 1000,
        seed: int = 0,
        alpha: float = 0.05,
    ) -> None:
        self.options: dict[str, Any] = {
            "labels": None if labels is None else [int(label) for label in labels],
            "tolerance_mm": tolerance_mm,
            "include_background": include_background,
            "empty_distance": check_empty_distance(empty_distance),
            "channel_axis": channel_axis,
            "class_names": class_names,
            "distances": distances,
        }
        self.summary_options: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "alpha": alpha}
        self.reset()

    def reset(self) -> None:
        """Forget every case seen so far."""
        self._cases: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._cases)

    def update(
        self, pred: Any, ref: Any, spacing: SpacingLike = None, case_id: Any = None
    ) -> dict[str, Any]:
        """Score one case (label maps, or one-hot arrays with the constructor's ``channel_axis``).

        Returns:
            The case's record as :meth:`compute` will list it (JSON-ready).
        """
        result = segmentation_metrics(pred, ref, spacing, **self.options)
        record = {
            "case_id": str(len(self._cases)) if case_id is None else str(case_id),
            "spacing": result["spacing"],
            "shape": result["shape"],
            "per_class": result["per_class"],
            "mean": result["mean"],
        }
        record = _jsonable(record)
        self._cases.append(record)
        return record

    def update_batch(
        self,
        pred: Any,
        ref: Any,
        spacing: SpacingLike = None,
        case_ids: Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Score a batch: the first axis indexes cases (``channel_axis`` is that of one case).

        ``spacing`` is one for all cases, or a sequence with one per case.
        """
        p, r = to_numpy(pred), to_numpy(ref)
        if p.shape[:1] != r.shape[:1]:
            raise MetricInputError(f"pred and ref batches differ: {p.shape} and {r.shape}")
        n = p.shape[0]
        if case_ids is not None and len(case_ids) != n:
            raise MetricInputError(f"{len(case_ids)} case ids for a batch of {n}")
        per_case = is_per_case_spacing(spacing, n)
        return [
            self.update(
                p[i],
                r[i],
                spacing[i] if per_case else spacing,  # type: ignore[index]
                None if case_ids is None else case_ids[i],
            )
            for i in range(n)
        ]

    def compute(self, **kwargs: Any) -> dict[str, Any]:
        """:func:`aggregate_segmentation` of every case since :meth:`reset`, JSON-ready.

        Keyword arguments override the constructor's ``n_boot``, ``seed`` and ``alpha``.
        """
        if not self._cases:
            raise MetricInputError("no cases: update() was not called since reset()")
        options = {**self.summary_options, **kwargs}
        out = aggregate_segmentation(self._cases, **options)
        settings = {k: dict(v) if isinstance(v, Mapping) else v for k, v in self.options.items()}
        out["settings"] = _jsonable(settings)
        return out
