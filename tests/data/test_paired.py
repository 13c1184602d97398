"""Paired image/mask folders: stem matching with mask suffixes, unmatched files, grids."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.data import PairedFolderDataset
from medlens.data.paired import file_stem
from medlens.errors import DatasetError, GeometryError
from medlens.image import Role


def _mask(shape=(10, 12)) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[3:7, 4:9] = 255
    return mask


@pytest.fixture
def paired(tmp_path, files):
    rgb = np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    files.png(tmp_path / "images" / "case1.png", rgb)
    files.png(tmp_path / "images" / "case2.png", rgb[..., 0])
    files.png(tmp_path / "images" / "case3.png", rgb[..., 1])
    files.png(tmp_path / "masks" / "case1_mask.png", _mask())
    files.png(tmp_path / "masks" / "case2.png", _mask())
    files.png(tmp_path / "masks" / "case3_Annotation.png", np.stack([_mask()] * 3, axis=-1))
    return tmp_path


def test_pairs_by_stem_and_suffix(paired):
    ds = PairedFolderDataset(paired)
    assert ds.ids() == ["case1", "case2", "case3"] and ds.task == "segmentation"
    first = ds[0]
    assert first.image.leading == ("channel",) and first.image.array.shape == (3, 10, 12)
    assert first.mask.role is Role.LABEL and first.mask.array.shape == (10, 12)
    assert set(np.unique(first.mask.array).tolist()) == {0, 1}  # 0/255 became 0/1
    assert ds[2].mask.array.shape == (10, 12)  # RGB mask collapsed
    assert ds[2].meta["label_path"].endswith("case3_Annotation.png")


def test_unmatched_files_listed(paired, files):
    files.png(paired / "images" / "lonely.png", np.zeros((10, 12), np.uint8))
    files.png(paired / "masks" / "stray_seg.png", _mask())
    with pytest.raises(DatasetError) as info:
        PairedFolderDataset(paired)
    message = str(info.value)
    assert "1 images without mask (lonely.png)" in message
    assert "1 masks without image (stray_seg.png)" in message


def test_custom_folder_names_and_grid(tmp_path, files):
    files.png(tmp_path / "img" / "a.png", np.zeros((10, 12), np.uint8))
    files.png(tmp_path / "gt" / "a_seg.png", _mask((10, 11)))
    ds = PairedFolderDataset(tmp_path, images="img", masks="gt", class_names=["bg", "lesion"])
    assert ds.class_names == ["bg", "lesion"]
    with pytest.raises(GeometryError, match=r"a_seg\.png"):
        ds[0]
    with pytest.raises(DatasetError, match="no masks/ folder"):
        PairedFolderDataset(tmp_path, images="img")


def test_file_stem():
    assert file_stem("x.nii.gz") == "x" and file_stem("y.PNG") == "y" and file_stem("z.raw") == "z"
