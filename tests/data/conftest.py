"""Fixtures for the dataset tests: real-data folders and small files written with PIL/nibabel.

The real folders come through the shared ``real`` fixture (tests/conftest.py), which skips with
the reason when ``MEDLENS_DATA`` is absent and marks the test ``realdata``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def hc18_root(real) -> Path:
    """The raw HC18 training folder (read only)."""
    return real("hc18")


@pytest.fixture(scope="session")
def medmnist_dir(real) -> Path:
    """The folder of MedMNIST .npz files (read only)."""
    return real("medmnist")


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image as PILImage

    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.ascontiguousarray(array)).save(path)
    return path


def write_nifti(
    path: Path, array_zyx: np.ndarray, spacing_xyz: tuple[float, ...] = (1.0, 1.0, 1.0)
) -> Path:
    """Write a C-order ``(z, y, x)`` array as NIfTI with a RAS diagonal affine."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing_xyz, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(array_zyx).T.copy(), affine), str(path))
    return path


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def ellipse_mask(shape: tuple[int, int], centre, axes, *, outline: bool = False) -> np.ndarray:
    """A filled ellipse (or its one-pixel 4-connected outline) as uint8 0/255."""
    from scipy import ndimage

    y, x = np.ogrid[: shape[0], : shape[1]]
    inside = ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 <= 1.0
    if outline:
        inside = inside & ~ndimage.binary_erosion(inside)
    return inside.astype(np.uint8) * 255


def make_hc18(root: Path, cases: dict[str, tuple[float, float]], *, outline: bool = True) -> Path:
    """A tiny HC18-layout folder: ``{filename: (pixel_size, hc_mm)}``; RGB outline annotations."""
    rng = np.random.default_rng(0)
    rows = ["filename,pixel size(mm),head circumference (mm)"]
    for i, (name, (pixel, hc)) in enumerate(cases.items()):
        stem = name.rsplit(".", 1)[0]
        write_png(root / "images" / name, rng.integers(0, 255, (60, 80), dtype=np.uint8))
        ring = ellipse_mask((60, 80), (40, 30), (25 - i, 18), outline=outline)
        write_png(root / "annotations" / f"{stem}_Annotation.png", np.stack([ring] * 3, axis=-1))
        rows.append(f"{name},{pixel},{hc}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


class Files:
    """The writers above, handed to tests as the ``files`` fixture."""

    png = staticmethod(write_png)
    nifti = staticmethod(write_nifti)
    json = staticmethod(write_json)
    ellipse = staticmethod(ellipse_mask)
    hc18 = staticmethod(make_hc18)


@pytest.fixture
def files() -> type[Files]:
    return Files
