"""Decathlon (MSD) and nnU-Net v2 folders: pairing, channels, grid checks, errors."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.data import DecathlonDataset
from medlens.errors import DatasetError, GeometryError
from medlens.image import Role


def _volume(seed: int, shape=(4, 6, 5)) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)


def _label(shape=(4, 6, 5)) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[1:3, 2:4, 1:3] = 1
    label[2, 2, 2] = 2
    return label


@pytest.fixture
def msd(tmp_path, files):
    """MSD form: training list, one modality, labels keyed by value."""
    root = tmp_path / "Task09_Spleen"
    for case in ("spleen_1", "spleen_2"):
        files.nifti(root / "imagesTr" / f"{case}.nii.gz", _volume(1), (0.8, 0.8, 2.5))
        files.nifti(root / "labelsTr" / f"{case}.nii.gz", _label(), (0.8, 0.8, 2.5))
    files.nifti(root / "imagesTs" / "spleen_9.nii.gz", _volume(2), (0.8, 0.8, 2.5))
    files.json(
        root / "dataset.json",
        {
            "name": "Spleen",
            "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "spleen", "2": "vessel"},
            "numTraining": 2,
            "training": [
                {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                for c in ("spleen_1", "spleen_2")
            ],
            "test": ["./imagesTs/spleen_9.nii.gz"],
        },
    )
    return root


def test_msd_training_pairs(msd):
    ds = DecathlonDataset(msd)
    assert ds.task == "segmentation" and len(ds) == 2 and ds.name == "Spleen"
    assert ds.class_names == ["background", "spleen", "vessel"] and ds.modality == "CT"
    assert ds.ids() == ["spleen_1", "spleen_2"] and not ds.has_subjects()
    sample = ds[0]
    assert sample.image.spatial_shape == (4, 6, 5)
    np.testing.assert_allclose(sample.image.spacing, (0.8, 0.8, 2.5))
    assert sample.image.modality == "CT"
    assert sample.mask.role is Role.LABEL and sample.mask.array.dtype == np.uint8
    np.testing.assert_array_equal(sample.mask.array, _label())
    assert sample.image.same_grid(sample.mask)


def test_msd_test_split(msd):
    ds = DecathlonDataset(msd, split="test")
    assert ds.ids() == ["spleen_9"] and ds[0].mask is None


def test_label_on_another_grid_names_label(msd, files):
    files.nifti(msd / "labelsTr" / "spleen_2.nii.gz", _label(), (0.8, 0.8, 3.0))
    ds = DecathlonDataset(msd)
    ds[0]  # the first case is fine
    with pytest.raises(GeometryError) as info:
        ds[1]
    message = str(info.value)
    assert "spleen_2.nii.gz" in message and "labelsTr" in message and "spacing" in message


def test_missing_files_and_json(msd, tmp_path):
    (msd / "labelsTr" / "spleen_2.nii.gz").unlink()
    with pytest.raises(DatasetError) as info:
        DecathlonDataset(msd)
    assert "dataset.json" in str(info.value) and "labelsTr/spleen_2.nii.gz" in str(info.value)
    empty = tmp_path / "empty_task"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"no dataset\.json"):
        DecathlonDataset(empty)
    (empty / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        DecathlonDataset(empty)


@pytest.fixture
def nnunet(tmp_path, files):
    """nnU-Net v2 form: two channels per case, labels keyed by name, subjects.json."""
    root = tmp_path / "Dataset001_Brain"
    for i, case in enumerate(("brain_001", "brain_002", "brain_003")):
        for channel in range(2):
            files.nifti(root / "imagesTr" / f"{case}_{channel:04d}.nii.gz", _volume(i + channel))
        files.nifti(root / "labelsTr" / f"{case}.nii.gz", _label())
    files.nifti(root / "imagesTs" / "brain_010_0000.nii.gz", _volume(7))
    files.nifti(root / "imagesTs" / "brain_010_0001.nii.gz", _volume(8))
    files.json(
        root / "dataset.json",
        {
            "channel_names": {"0": "T1", "1": "T2"},
            "labels": {"background": 0, "tumour": 1, "edema": 2},
            "numTraining": 3,
            "file_ending": ".nii.gz",
        },
    )
    files.json(root / "subjects.json", {"brain_001": "A", "brain_002": "A", "brain_003": "B"})
    return root


def test_nnunet_v2_channels_stack(nnunet):
    ds = DecathlonDataset(nnunet)
    assert ds.ids() == ["brain_001", "brain_002", "brain_003"]
    assert ds.channel_names == ["T1", "T2"] and ds.modality is None
    assert ds.class_names == ["background", "tumour", "edema"]
    assert ds.subjects() == ["A", "A", "B"] and ds.has_subjects()
    sample = ds[1]
    assert sample.image.leading == ("channel",) and sample.image.array.shape == (2, 4, 6, 5)
    np.testing.assert_allclose(sample.image.array[1], _volume(2), rtol=1e-6)
    assert sample.subject == "A"
    test = DecathlonDataset(nnunet, split="test")
    assert test.ids() == ["brain_010"] and test[0].image.num_channels == 2


def test_nnunet_v2_missing_channel_and_count(nnunet):
    (nnunet / "imagesTr" / "brain_002_0001.nii.gz").unlink()
    with pytest.raises(DatasetError, match="brain_002_0001"):
        DecathlonDataset(nnunet)
    (nnunet / "labelsTr" / "brain_003.nii.gz").unlink()
    with pytest.raises(DatasetError, match="numTraining is 3 but labelsTr has 2"):
        DecathlonDataset(nnunet, check_files=False)


def test_channel_on_another_grid(nnunet, files):
    files.nifti(nnunet / "imagesTr" / "brain_003_0001.nii.gz", _volume(0, (4, 6, 6)))
    with pytest.raises(GeometryError, match="brain_003_0001"):
        DecathlonDataset(nnunet)[2]
