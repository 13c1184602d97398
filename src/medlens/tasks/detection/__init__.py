"""Detection, 2D and 3D: FCOS planned from the boxes, trained on a CPU, scored as the field does."""

from __future__ import annotations

from medlens.tasks.detection.plan import PLAN_FORMAT, DetectionPlan, box_statistics, make_plan

__all__ = ["PLAN_FORMAT", "DetectionPlan", "box_statistics", "make_plan"]
