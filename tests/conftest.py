"""Shared fixtures: where the real data lives, SimpleITK oracles and small file helpers.

Real data is found through ``MEDLENS_DATA`` (default ``../shared/data``); every test that needs it
goes through the ``data_root`` fixture, which skips with a clear reason when the folder is absent,
and is marked ``realdata`` automatically. Tests never write into the data folder: anything they
must modify is copied into ``tmp_path`` first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medlens._data_path import data_root as _data_root

# Paths of the real inputs, relative to the data root.
T1_SERIES = ("dicom", "mr_t1_brain")
CT_SERIES = ("totalsegmentator", "ct_dicom_series", "dicom")
CT_SERIES_SEG = ("totalsegmentator", "ct_dicom_series", "example_seg_dicom.nii.gz")
FMRI_PHANTOM = ("dicom", "fmri_epi_phantom")
FMRI_HUMAN = ("dicom", "fmri_epi_human")
CT_SMALL = ("totalsegmentator", "ct_small", "example_ct_sm.nii.gz")
CT_SMALL_SEG = ("totalsegmentator", "ct_small", "example_seg.nii.gz")
MR_SMALL = ("totalsegmentator", "mr_small", "example_mr_sm.nii.gz")
MR_SMALL_SEG = ("totalsegmentator", "mr_small", "example_seg_mr.nii.gz")


def pytest_collection_modifyitems(config, items):
    """Every test that reaches the real data (directly or through a fixture) is ``realdata``."""
    for item in items:
        if "data_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realdata)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real-data folder; the test is skipped with the reason when it is missing."""
    root = _data_root()
    if not root.is_dir():
        pytest.skip(f"real data folder not found at {root} (set MEDLENS_DATA to the shared data)")
    return root


@pytest.fixture(scope="session")
def real(data_root):
    """``real(*parts)``: a path under the data root, skipping when that item is missing."""

    def get(*parts: str) -> Path:
        path = data_root.joinpath(*parts)
        if not path.exists():
            pytest.skip(f"real data item {path} is missing")
        return path

    return get


# ----------------------------------------------------------------------------- SimpleITK oracles
def sitk_read(path: Path):
    """SimpleITK's reading of a file, or of the one DICOM series in a folder."""
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def assert_matches_sitk(image, reference, *, values: bool = True, atol: float = 1e-4) -> None:
    """Our image equals SimpleITK's in size, spacing, origin, direction (and voxel values)."""
    import SimpleITK as sitk

    n = reference.GetDimension()
    assert image.size == reference.GetSize()
    np.testing.assert_allclose(image.spacing, reference.GetSpacing(), rtol=1e-6, atol=atol)
    np.testing.assert_allclose(image.origin, reference.GetOrigin(), rtol=1e-6, atol=atol)
    np.testing.assert_allclose(
        image.direction, np.reshape(reference.GetDirection(), (n, n)), atol=atol
    )
    if values:
        expected = sitk.GetArrayFromImage(reference)
        assert image.array.shape == expected.shape
        np.testing.assert_array_equal(image.array, expected)


# ----------------------------------------------------------------------------- file helpers
def copy_files(files, destination: Path) -> list[Path]:
    """Writable copies of ``files`` in ``destination`` (same names)."""
    destination.mkdir(parents=True, exist_ok=True)
    out = []
    for file in files:
        target = destination / Path(file).name
        shutil.copyfile(file, target)
        out.append(target)
    return out


def series_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file())


class Helpers:
    """The helpers above, handed to tests as the ``helpers`` fixture."""

    sitk_read = staticmethod(sitk_read)
    assert_matches_sitk = staticmethod(assert_matches_sitk)
    copy_files = staticmethod(copy_files)
    series_files = staticmethod(series_files)
    T1_SERIES = T1_SERIES
    CT_SERIES = CT_SERIES
    CT_SERIES_SEG = CT_SERIES_SEG
    FMRI_PHANTOM = FMRI_PHANTOM
    FMRI_HUMAN = FMRI_HUMAN
    CT_SMALL = CT_SMALL
    CT_SMALL_SEG = CT_SMALL_SEG
    MR_SMALL = MR_SMALL
    MR_SMALL_SEG = MR_SMALL_SEG


@pytest.fixture(scope="session")
def helpers() -> type[Helpers]:
    return Helpers


# ----------------------------------------------------------------------------- loaded real images
# Loaded once per session; tests must not modify them (copy the array first).
@pytest.fixture(scope="session")
def t1_dir(real) -> Path:
    return real(*T1_SERIES)


@pytest.fixture(scope="session")
def t1_image(t1_dir):
    from medlens.io import load_image

    return load_image(t1_dir)


@pytest.fixture(scope="session")
def ct_dir(real) -> Path:
    return real(*CT_SERIES)


@pytest.fixture(scope="session")
def ct_image(ct_dir):
    """The TotalSegmentator 20-slice CT DICOM series (JPEG 2000)."""
    from medlens.io import load_image

    return load_image(ct_dir)


@pytest.fixture(scope="session")
def t1_sitk(t1_dir):
    return sitk_read(t1_dir)


@pytest.fixture(scope="session")
def ct_sitk(ct_dir):
    return sitk_read(ct_dir)


@pytest.fixture(scope="session")
def ct_small_image(real):
    from medlens.io import load_image

    return load_image(real(*CT_SMALL))


@pytest.fixture(scope="session")
def ct_small_sitk(real):
    return sitk_read(real(*CT_SMALL))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks: one torch thread is faster, and far faster on a busy machine (no spinning
    OpenMP workers competing for the cores). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_ellipses(root: Path, n: int, seed: int = 1) -> Path:
    """Paired ``root/images`` + ``root/masks`` PNGs (40x48): a bright ellipse on noise each."""
    from PIL import Image as PILImage

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:40, :48]
    for i in range(n):
        cy, cx = rng.integers(14, 26), rng.integers(16, 32)
        ry, rx = rng.integers(5, 11), rng.integers(5, 12)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        image = np.clip(rng.normal(70, 20, (40, 48)) + 90 * inside, 0, 255).astype(np.uint8)
        PILImage.fromarray(image).save(root / "images" / f"case{i:02d}.png")
        PILImage.fromarray((inside * 255).astype(np.uint8)).save(
            root / "masks" / f"case{i:02d}_mask.png"
        )
    return root


@pytest.fixture(scope="session")
def ellipse_images():
    """:func:`write_ellipses`, for tests that need a tiny paired segmentation folder."""
    return write_ellipses


@pytest.fixture(scope="session")
def old_runs(tmp_path_factory) -> Path:
    """Run folders of both tasks written by medlens before the task platform, with that code's
    predictions (``tests/fixtures/make_old_runs.py``); skipped where the commit is unavailable
    (a shallow clone, no git)."""
    import os
    import subprocess
    import sys
    import tarfile

    fixtures = Path(__file__).resolve().parent / "fixtures"
    sys.path.insert(0, str(fixtures))
    from make_old_runs import OLD_COMMIT

    repo = fixtures.parents[1]
    root = tmp_path_factory.mktemp("old-medlens")
    try:
        archive = subprocess.run(["git", "-C", str(repo), "archive", OLD_COMMIT, "src"],
                                 capture_output=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"medlens {OLD_COMMIT} is not in this checkout's git history")
    (root / "old.tar").write_bytes(archive)
    with tarfile.open(root / "old.tar") as tar:
        tar.extractall(root / "old", filter="data")
    out = root / "runs"
    done = subprocess.run(
        [sys.executable, str(fixtures / "make_old_runs.py"), str(out)],
        env={**os.environ, "PYTHONPATH": str(root / "old" / "src")},
        capture_output=True, text=True, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return out
