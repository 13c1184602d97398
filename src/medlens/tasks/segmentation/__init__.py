"""Segmentation, 2D and 3D: planning from the data, training, sliding-window inference."""

from __future__ import annotations

from medlens.tasks.segmentation.plan import (
    PLAN_FORMAT,
    PlanError,
    SegmentationPlan,
    apply_plan_overrides,
    make_plan,
)

__all__ = ["PLAN_FORMAT", "PlanError", "SegmentationPlan", "apply_plan_overrides", "make_plan"]
