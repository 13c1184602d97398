"""The Sunnybrook layout read as it is: contoured frames, masks, subjects and the expert volumes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from medlens.errors import DatasetError


@pytest.fixture(scope="module")
def sunnybrook(data_root):
    path = data_root / "sunnybrook"
    if not path.is_dir():
        pytest.skip(f"{path} is missing")
    return path


def shoelace(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def test_contoured_frames_open_as_a_segmentation_dataset(sunnybrook):
    from medlens.data import open_dataset
    from medlens.data.open import detect_format
    from medlens.io.annotations import read_contour

    assert detect_format(sunnybrook) == "sunnybrook"
    data = open_dataset(sunnybrook, negatives=False)
    contours = sorted(sunnybrook.glob("contourfiles/*/i-contours/*.txt"))
    assert len(data) == len(contours) == 56
    assert data.task == "segmentation" and data.class_names == ["background", "left ventricle"]
    assert sorted(set(data.subjects())) == ["SC-HF-I-1", "SC-HF-I-4", "SC-HF-I-5"]
    sample = data[0]
    assert sample.id == "SC-HF-I-1_0048" and sample.subject == "SC-HF-I-1"
    assert sample.image.array.shape == sample.mask.array.shape == (256, 256)
    np.testing.assert_allclose(sample.image.spacing, (1.367188, 1.367188))
    import pydicom

    pixels = pydicom.dcmread(sunnybrook / "dicoms" / "SCD0000101" / "48.dcm").pixel_array
    np.testing.assert_array_equal(sample.image.array, pixels)  # the stored grid, unflipped
    for k in (0, 17, 40):  # filled pixels agree with the polygon's own area
        s = data[k]
        area = shoelace(read_contour(s.meta["contours"]["i"]))
        assert abs(int(s.mask.array.sum()) - area) / area < 0.05, s.id
        ys, xs = np.nonzero(s.mask.array)  # and sit where the contour is
        points = read_contour(s.meta["contours"]["i"])
        assert abs(xs.mean() - points[:, 0].mean()) < 2 and abs(ys.mean() - points[:, 1].mean()) < 2


def test_slices_beyond_the_contoured_ones_are_empty_frames(sunnybrook):
    """At each contoured phase, the slices above the base and below the apex (which the experts
    left uncontoured) come as frames with empty masks, of the same phase."""
    from medlens.data.sunnybrook import SunnybrookDataset, contour_volumes

    data = SunnybrookDataset(sunnybrook)
    negatives = [i for i, e in enumerate(data.entries) if e.meta.get("negative")]
    assert len(data) == 56 + len(negatives) and len(negatives) == 10
    expert = contour_volumes(sunnybrook, "SC-HF-I-1")
    for i in negatives:
        entry = data.entries[i]
        if entry.subject != "SC-HF-I-1":
            continue
        phase, slice_ = entry.meta["phase"], entry.meta["slice"]
        assert phase in expert["slices"] and slice_ not in expert["slices"][phase]
        assert not (min(expert["slices"][phase]) <= slice_ <= max(expert["slices"][phase]))
        sample = data[i]
        assert sample.mask.array.sum() == 0 and sample.image.array.shape == (256, 256)


def test_both_contours_give_cavity_and_myocardium(sunnybrook):
    from medlens.data.sunnybrook import SunnybrookDataset

    data = SunnybrookDataset(sunnybrook, labels="both", subjects=["SC-HF-I-1"])
    assert data.class_names == ["background", "left ventricle", "myocardium"]
    assert 0 < len(data) < 20  # epicardium is drawn at end-diastole only
    mask = data[0].mask.array
    cavity, wall = mask == 1, mask == 2
    assert cavity.sum() > 0 and wall.sum() > 0
    from scipy.ndimage import binary_dilation

    assert (binary_dilation(cavity, iterations=2) & wall).any()  # the wall surrounds the cavity


def test_expert_volumes_match_the_polygons(sunnybrook):
    """EDV and ESV from the filled contours agree with the polygons' areas times the slice
    spacing (10 mm), end-diastole is the larger, and EF is in the heart-failure range."""
    from medlens.data.sunnybrook import contour_volumes
    from medlens.io.annotations import read_contour

    got = contour_volumes(sunnybrook, "SC-HF-I-1")
    assert (got["series"], got["ed_phase"], got["es_phase"]) == ("SCD0000101", 18, 7)
    assert [len(s) for s in got["slices"].values()] == [9, 9]
    files = {int(p.name.split("-")[2]): p for p in
             (sunnybrook / "contourfiles" / "SC-HF-I-1" / "i-contours").glob("*.txt")}  # fmt: skip
    total = sum(shoelace(read_contour(p)) for p in files.values()) * 1.367188**2 * 10 / 1000
    assert got["edv_ml"] + got["esv_ml"] == pytest.approx(total, rel=0.04)
    assert got["edv_ml"] > got["esv_ml"] and 15 < got["ef_percent"] < 40
    assert got["sv_ml"] == pytest.approx(got["edv_ml"] - got["esv_ml"])


def _layout(tmp_path, sunnybrook, skip: set[str] = frozenset()):
    """A copy of patient SC-HF-I-1's layout made of links (nothing is written to the data)."""
    root = tmp_path / "sb"
    (root / "dicoms" / "SCD0000101").mkdir(parents=True)
    for f in (sunnybrook / "dicoms" / "SCD0000101").iterdir():
        if f.name not in skip:
            os.symlink(f, root / "dicoms" / "SCD0000101" / f.name)
    (root / "contourfiles").mkdir()
    os.symlink(sunnybrook / "contourfiles" / "SC-HF-I-1", root / "contourfiles" / "SC-HF-I-1")
    (root / "link.csv").write_text("patient_id,original_id\nSCD0000101,SC-HF-I-1\n")
    return root


def test_a_contour_on_a_missing_file_names_both(tmp_path, sunnybrook):
    from medlens.data.sunnybrook import SunnybrookDataset

    root = _layout(tmp_path, sunnybrook, skip={"48.dcm"})
    with pytest.raises(DatasetError, match=r"IM-0001-0048-icontour-manual\.txt: .*48\.dcm") as err:
        SunnybrookDataset(root)
    assert "\n" not in str(err.value)


def test_unpaired_folders_and_bad_contours_are_one_line(tmp_path, sunnybrook):
    from medlens.data.sunnybrook import SunnybrookDataset, contour_mask

    root = _layout(tmp_path, sunnybrook)
    (root / "link.csv").write_text("patient_id,original_id\nSCD0000999,SC-HF-I-9\n")
    with pytest.raises(DatasetError, match="no patient has both"):
        SunnybrookDataset(root)
    bad = tmp_path / "IM-0001-0001-icontour-manual.txt"
    bad.write_text("10 10\n300 12\n20 40\n")
    with pytest.raises(DatasetError, match="outside the 256x256 image"):
        contour_mask(bad, (256, 256))
