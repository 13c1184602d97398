"""HC18: outline filling, circumference fit, raw reading and conversion to nnU-Net layout."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest

from medlens.data import (
    DecathlonDataset,
    HC18Dataset,
    convert_hc18,
    ellipse_circumference,
    fill_outline,
    hc18_subject,
)
from medlens.errors import DatasetError, MedlensError
from medlens.image import Role


def test_subject_is_three_digit_prefix():
    assert hc18_subject("100_2HC.png") == hc18_subject("100_HC.png") == "100"
    assert hc18_subject("007_3HC.png") == "007"


def test_fill_outline_variants(files):
    filled = files.ellipse((120, 160), (80, 60), (50, 35)) > 0
    outline = files.ellipse((120, 160), (80, 60), (50, 35), outline=True) > 0

    mask, how = fill_outline(outline)
    assert how == {"annotation": "outline", "closing_radius": 0}
    assert mask.dtype == np.uint8 and abs(int(mask.sum()) - int(filled.sum())) < 5
    assert mask.sum() > 10 * outline.sum()

    mask, how = fill_outline(filled)
    assert how["annotation"] == "filled" and np.array_equal(mask > 0, filled)

    broken = outline.copy()
    broken[55:66, 125:] = False  # a gap on the right of the ellipse
    mask, how = fill_outline(broken)
    assert how["closing_radius"] > 0
    assert abs(int(mask.sum()) - int(filled.sum())) < 0.03 * filled.sum()

    arc = outline.copy()
    arc[60:] = False  # only the upper half: nothing to close
    with pytest.raises(DatasetError, match="does not close"):
        fill_outline(arc, name="arc.png")
    with pytest.raises(DatasetError, match="empty"):
        fill_outline(np.zeros((5, 5)), name="empty.png")


def test_ellipse_circumference_matches_geometry(files):
    mask = files.ellipse((400, 500), (250, 200), (150, 90)) > 0
    a, b = 150.0, 90.0
    h = ((a - b) / (a + b)) ** 2
    exact = np.pi * (a + b) * (1 + 3 * h / (10 + np.sqrt(4 - 3 * h)))
    assert ellipse_circumference(mask) == pytest.approx(exact, rel=0.01)
    assert ellipse_circumference(mask, (0.1, 0.1)) == pytest.approx(0.1 * exact, rel=0.01)
    assert ellipse_circumference(np.zeros((4, 4))) == 0.0


def test_convert_synthetic(tmp_path, files):
    cases = {"000_HC.png": (0.1, 50.0), "000_2HC.png": (0.2, 51.0), "001_HC.png": (0.15, 60.0)}
    src = files.hc18(tmp_path / "raw", cases)
    dst = tmp_path / "out"
    summary = convert_hc18(src, dst, progress=False)
    assert summary["images"] == 3 and summary["subjects"] == 2 and summary["output"] == str(dst)
    assert summary["annotations"] == {"outline": 3} and summary["closed_gaps"] == []
    spec = json.loads((dst / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "US"} and spec["labels"] == {"background": 0, "head": 1}
    assert spec["file_ending"] == ".nii.gz" and spec["numTraining"] == 3
    assert json.loads((dst / "subjects.json").read_text())["000_2HC"] == "000"
    with (dst / "hc18_labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["subject"] for r in rows] == ["000", "000", "001"]
    assert rows[1]["head circumference (mm)"] == "51.0"

    ds = DecathlonDataset(dst)
    assert ds.subjects() == ["000", "000", "001"] and ds.class_names == ["background", "head"]
    sample = ds[ds.ids().index("000_2HC")]
    # NIfTI keeps spacing as float32: equal to the pixel size to 1e-7.
    np.testing.assert_allclose(sample.image.spacing, (0.2, 0.2), rtol=1e-6)
    assert sample.image.modality == "US" and sample.mask.role is Role.LABEL
    assert sample.image.same_grid(sample.mask)
    assert sample.mask.array.sum() > 10 * (sample.mask.array.shape[1])  # filled, not a ring

    with pytest.raises(DatasetError, match="not empty"):
        convert_hc18(src, dst, progress=False)
    summary = convert_hc18(src, dst, progress=False, subjects=["1"], overwrite=True)
    assert summary["images"] == 1
    assert sorted(p.name for p in (dst / "labelsTr").iterdir()) == ["001_HC.nii.gz"]
    with pytest.raises(DatasetError, match="no images of the selected subjects"):
        convert_hc18(src, tmp_path / "none", progress=False, subjects=["7"])
    with pytest.raises(MedlensError, match="inside the input folder"):
        convert_hc18(src, src / "converted", progress=False)
    assert not (src / "converted").exists()


@pytest.mark.realdata
def test_real_hc18_subset_masks_match_reference(hc18_root):
    ds = HC18Dataset(hc18_root, limit=40)
    assert len(set(ds.subjects())) == 40 and len(ds) > 40  # second images of some subjects
    errors = []
    for sample in ds:
        pixel = sample.meta["pixel_size"]
        assert sample.image.spacing == (pixel, pixel) and sample.image.array.shape == (540, 800)
        assert sample.mask.array.max() == 1
        errors.append(
            ellipse_circumference(sample.mask.array, sample.mask.spacing) - sample.meta["hc_mm"]
        )
    errors = np.abs(errors)
    # Measured on this data: mean 0.94 mm, max 1.9 mm (the moment fit includes the drawn line).
    assert errors.mean() < 2.0 and errors.max() < 4.0


@pytest.mark.realdata
def test_real_hc18_convert_subset(hc18_root, tmp_path):
    summary = convert_hc18(hc18_root, tmp_path / "hc18", progress=False, subjects=["010", "014"])
    assert summary["images"] == 5 and summary["subjects"] == 2  # 010 has 2 images, 014 has 3
    ds = DecathlonDataset(tmp_path / "hc18")
    assert set(ds.subjects()) == {"010", "014"}
    sample = ds[0]
    reference = HC18Dataset(hc18_root, subjects=["010"])[0]
    np.testing.assert_array_equal(sample.image.array, reference.image.array)
    np.testing.assert_array_equal(sample.mask.array, reference.mask.array)
    np.testing.assert_allclose(sample.image.spacing, reference.image.spacing)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_hc18_convert_all(hc18_root, tmp_path):
    start = time.perf_counter()
    summary = convert_hc18(hc18_root, tmp_path / "hc18", progress=False)
    seconds = time.perf_counter() - start
    assert summary["images"] == 503 and summary["subjects"] == 403
    assert sum(summary["annotations"].values()) == 503
    ds = DecathlonDataset(tmp_path / "hc18")
    assert len(ds) == 503 and len(set(ds.subjects())) == 403
    assert seconds < 300
