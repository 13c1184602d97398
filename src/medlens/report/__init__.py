"""Run reports: the figures and the static HTML page a classification run leaves behind.

:func:`write_classification_report` writes one self-contained ``report.html`` (learning curves,
ROC and precision-recall curves with the operating point, calibration, confusion matrix, right
and wrong examples, metrics with confidence intervals) that opens offline. The figure functions
return PNG bytes, for use elsewhere (a notebook, a paper draft).

Every other report (segmentation evaluation, explanations) is built from the same page blocks,
:mod:`medlens.report.page` (:func:`escape`, :func:`figure`, :func:`try_figure`, :func:`section`,
:func:`html_page`, ...). This package never imports ``medlens.tasks`` or ``medlens.explain``:
they import it.
"""

from __future__ import annotations

from medlens.report.html import THRESHOLD_YOUDEN, write_classification_report
from medlens.report.page import (
    Section,
    escape,
    figure,
    html_page,
    interval,
    number,
    png_size,
    section,
    try_figure,
)
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
    "Section",
    "calibration_plot",
    "confusion_matrix_plot",
    "escape",
    "example_grid",
    "figure",
    "html_page",
    "interval",
    "learning_curves",
    "number",
    "png_size",
    "pr_curves",
    "roc_curves",
    "section",
    "try_figure",
    "write_classification_report",
]
