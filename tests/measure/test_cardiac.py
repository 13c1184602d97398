"""Left-ventricular volumes and EF from label maps: discs summed against analytic volumes."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.errors import MedlensError
from medlens.measure.cardiac import cardiac_indices, cavity_areas, volume_curve


def ellipsoids(radii_mm, *, pixel=0.5, slice_mm=1.0, size=96, slices=40):
    """Label maps (t, z, y, x) of ellipsoids with semi-axes ``(a, a, c)`` mm per phase, on a
    fine grid so the discs approach the analytic volume."""
    z = (np.arange(slices) - (slices - 1) / 2) * slice_mm
    y, x = ((np.arange(size) - (size - 1) / 2) * pixel,) * 2
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    maps = [((xx / a) ** 2 + (yy / a) ** 2 + (zz / c) ** 2 <= 1).astype(np.uint8)
            for a, c in radii_mm]  # fmt: skip
    return np.stack(maps), (pixel, pixel, slice_mm)


def test_discs_approach_the_ellipsoid_volume_and_ef():
    radii = [(20.0, 16.0), (17.0, 14.0), (14.0, 12.0), (17.0, 14.0)]  # one cycle, 4 phases
    masks, spacing = ellipsoids(radii)
    volumes = volume_curve(cavity_areas(masks, spacing[:2]), spacing[2])
    analytic = np.array([4 / 3 * np.pi * a * a * c / 1000 for a, c in radii])  # ml
    np.testing.assert_allclose(volumes, analytic, rtol=0.02)
    got = cardiac_indices(volumes)
    assert (got["ed_phase"], got["es_phase"]) == (0, 2)
    ef = 100 * (analytic[0] - analytic[2]) / analytic[0]
    assert got["ef_percent"] == pytest.approx(ef, abs=1.0)
    assert got["sv_ml"] == pytest.approx(got["edv_ml"] - got["esv_ml"])


def test_areas_count_only_the_asked_label_and_use_the_pixel_size():
    masks = np.zeros((2, 1, 4, 5), np.uint8)
    masks[0, 0, :2] = 1  # 10 pixels of label 1
    masks[0, 0, 2:] = 2  # and 10 of label 2
    masks[1, 0, 0, :3] = 1
    areas = cavity_areas(masks, (0.5, 2.0), label=1)
    np.testing.assert_allclose(areas[:, 0], [10.0, 3.0])  # 1 mm^2 pixels
    np.testing.assert_allclose(volume_curve(areas, 8.0), [0.08, 0.024])


def test_phase_numbers_are_reported_as_given():
    got = cardiac_indices([80.0, 150.0], phases=[7, 18])
    assert (got["ed_phase"], got["es_phase"], round(got["ef_percent"], 3)) == (18, 7, 46.667)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cardiac_indices([100.0]), "at least two phases"),
        (lambda: cardiac_indices([0.0, 0.0]), "no left ventricle"),
        (lambda: cardiac_indices([1.0, np.nan]), "missing"),
        (lambda: cavity_areas(np.zeros((3, 4, 4)), (1, 1)), "time, slice, y, x"),
        (lambda: volume_curve(np.ones((2, 2)), 0.0), "slice spacing"),
    ],
)
def test_bad_curves_are_refused_in_one_line(call, message):
    with pytest.raises(MedlensError, match=message) as caught:
        call()
    assert "\n" not in str(caught.value)
