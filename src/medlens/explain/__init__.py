"""Explaining trained models: attributions (Captum) and whether they are faithful."""

from medlens.explain.methods import (
    METHOD_NAMES,
    METHODS,
    RegionScore,
    attribute,
    baseline_like,
    default_layer,
    superpixels,
)

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "RegionScore",
    "attribute",
    "baseline_like",
    "default_layer",
    "superpixels",
]
