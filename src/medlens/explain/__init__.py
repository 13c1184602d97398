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
from medlens.explain.run import ExplainJob, explain_job, find_layer, parse_methods

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "ExplainJob",
    "RegionScore",
    "attribute",
    "baseline_like",
    "default_layer",
    "explain_job",
    "find_layer",
    "parse_methods",
    "superpixels",
]
