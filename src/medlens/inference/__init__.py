"""Inference over whole images: sliding-window prediction, mirroring TTA and fold ensembles.

Networks trained on patches predict a whole volume window by window; :func:`sliding_window`
blends the windows with Gaussian weights, :func:`ensemble` averages cross-validation folds in the
same pass. Conventions (window placement, padding, weighting) are in
:mod:`medlens.inference.sliding_window`.
"""

from __future__ import annotations

from medlens.inference.sliding_window import (
    Predictor,
    ensemble,
    gaussian_importance,
    sliding_window,
    window_starts,
)

__all__ = ["Predictor", "ensemble", "gaussian_importance", "sliding_window", "window_starts"]
