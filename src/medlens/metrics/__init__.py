"""Evaluation metrics with confidence intervals.

Classification: binary, multi-class, multi-label (with ignored / uncertain labels) and ordinal,
point estimates checked against scikit-learn, percentile bootstrap intervals, Youden thresholds
chosen on validation data, calibration error and curve data for reports.
"""

from __future__ import annotations

from medlens.metrics._inputs import TASKS as CLASSIFICATION_TASKS
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

__all__ = [
    "CLASSIFICATION_TASKS",
    "HEADLINE",
    "ClassificationMetric",
    "MetricInputError",
    "bootstrap_ci",
    "calibration_curve_data",
    "choose_thresholds",
    "classification_metrics",
    "ece_kind",
    "evaluate_classification",
    "expected_calibration_error",
    "pr_curve_data",
    "roc_curve_data",
    "youden_threshold",
]
