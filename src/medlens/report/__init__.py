"""Run reports: the figures and the static HTML page a classification run leaves behind.

:func:`write_classification_report` writes one self-contained ``report.html`` (learning curves,
ROC and precision-recall curves with the operating point, calibration, confusion matrix, right
and wrong examples, metrics with confidence intervals) that opens offline. The figure functions
return PNG bytes, for use elsewhere (a notebook, a paper draft).
"""

from __future__ import annotations

from medlens.report.html import THRESHOLD_YOUDEN, write_classification_report
from medlens.report.plots import (
    calibration_plot,
    confusion_matrix_plot,
    example_grid,
    learning_curves,
    pr_curves,
    roc_curves,
)

__all__ = [
    "THRESHOLD_YOUDEN",
    "calibration_plot",
    "confusion_matrix_plot",
    "example_grid",
    "learning_curves",
    "pr_curves",
    "roc_curves",
    "write_classification_report",
]
