"""Evaluation metrics with confidence intervals.

Classification: binary, multi-class, multi-label (with ignored / uncertain labels) and ordinal,
point estimates checked against scikit-learn, percentile bootstrap intervals, Youden thresholds
chosen on validation data, calibration error and curve data for reports.

Segmentation: Dice, IoU, HD95, ASSD and normalised surface Dice per class, spacing-aware, with
empty masks handled as Metrics Reloaded recommends and per-case records for reports.

Detection (:mod:`medlens.metrics.detection`, imported from there): COCO average precision of 2D
and 3D boxes (pycocotools' rules, with ignore flags and image-bootstrap intervals), FROC and CPM
by the LUNA16 rules with scan-bootstrap intervals, and count errors for cell counting.

Reconstruction: NMSE, PSNR and SSIM of magnitude images as fastMRI defines them, summaries over
cases and paired differences between two methods with bootstrap intervals.

Regression (:func:`regression_metrics`): MAE, RMSE, Bland-Altman bias and limits of agreement,
Pearson's r and R^2 of measured values (EF) with bootstrap intervals.
"""

from __future__ import annotations

from medlens.metrics._inputs import TASKS as CLASSIFICATION_TASKS
from medlens.metrics._seg_summary import mean_summary
from medlens.metrics.classification import (
    HEADLINE,
    ClassificationMetric,
    MetricInputError,
    bootstrap_ci,
    calibration_curve_data,
    choose_thresholds,
    classification_metrics,
    ece_kind,
    evaluate_classification,
    expected_calibration_error,
    pr_curve_data,
    roc_curve_data,
    youden_threshold,
)
from medlens.metrics.reconstruction import (
    nmse,
    paired_difference,
    psnr,
    reconstruction_summary,
    ssim,
)
from medlens.metrics.regression import regression_metrics
from medlens.metrics.segmentation import (
    EMPTY_STATES,
    SEGMENTATION_METRICS,
    SegmentationMetric,
    aggregate_segmentation,
    array_spacing,
    assd,
    dice,
    hausdorff95,
    hausdorff_distance,
    iou,
    segmentation_metrics,
    surface_dice,
)

__all__ = [
    "CLASSIFICATION_TASKS",
    "EMPTY_STATES",
    "HEADLINE",
    "SEGMENTATION_METRICS",
    "ClassificationMetric",
    "MetricInputError",
    "SegmentationMetric",
    "aggregate_segmentation",
    "array_spacing",
    "assd",
    "bootstrap_ci",
    "calibration_curve_data",
    "choose_thresholds",
    "classification_metrics",
    "dice",
    "ece_kind",
    "evaluate_classification",
    "expected_calibration_error",
    "hausdorff95",
    "hausdorff_distance",
    "iou",
    "mean_summary",
    "nmse",
    "paired_difference",
    "pr_curve_data",
    "psnr",
    "reconstruction_summary",
    "regression_metrics",
    "roc_curve_data",
    "segmentation_metrics",
    "ssim",
    "surface_dice",
    "youden_threshold",
]
