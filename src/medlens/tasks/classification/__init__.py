"""Classification, 2D and 3D: binary, multi-class, multi-label and ordinal.

:func:`train_classification` runs the whole job; :func:`load_run` and :func:`predict_probs` use
a finished run; :func:`read_inputs` reads what a user wants predicted.
"""

from __future__ import annotations

from medlens.tasks.classification.bundle import Run, load_run, metric_task, predict_probs
from medlens.tasks.classification.data import ImageSet, InputSpec, load_labelled, read_inputs
from medlens.tasks.classification.train import train_classification

__all__ = [
    "ImageSet",
    "InputSpec",
    "Run",
    "load_labelled",
    "load_run",
    "metric_task",
    "predict_probs",
    "read_inputs",
    "train_classification",
]
