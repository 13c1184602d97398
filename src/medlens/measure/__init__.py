"""Clinical measurements from predicted masks: fetal head circumference (HC18), and the left
ventricle's volumes and ejection fraction from cine MRI (:mod:`.cardiac`).

Heavy dependencies (scipy, scikit-image, the image readers) are imported when a measurement
runs, so importing this package is cheap.
"""

from __future__ import annotations

from medlens.measure.cardiac import cardiac_indices, cavity_areas, volume_curve
from medlens.measure.head_circumference import (
    LINE_HALF_WIDTH_PX,
    Ellipse,
    EmptyMaskError,
    MeasurementError,
    fit_head_ellipse,
    head_circumference_mm,
    measure_directory,
    ramanujan_circumference,
    read_pixel_sizes,
)

__all__ = [
    "LINE_HALF_WIDTH_PX",
    "Ellipse",
    "EmptyMaskError",
    "MeasurementError",
    "cardiac_indices",
    "cavity_areas",
    "fit_head_ellipse",
    "head_circumference_mm",
    "measure_directory",
    "ramanujan_circumference",
    "read_pixel_sizes",
    "volume_curve",
]
