"""MedMNIST .npz reading: real BreastMNIST/AdrenalMNIST3D files and synthetic variants."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.data import MEDMNIST_INFO, MedMNISTDataset, available_splits
from medlens.data.medmnist import medmnist_name
from medlens.errors import DatasetError


@pytest.mark.realdata
def test_breastmnist_real(medmnist_dir):
    path = medmnist_dir / "breastmnist.npz"
    assert available_splits(path) == ["train", "val"]
    train = MedMNISTDataset(path)
    val = MedMNISTDataset(path, split="val")
    assert (len(train), len(val)) == (546, 78)
    assert train.class_names == ["malignant", "normal, benign"]
    assert train.task == "classification" and train.num_classes == 2
    assert train.modality == "US" and train.spatial_dims == 2 and train.channels == 1
    images, labels = train.arrays()
    assert images.shape == (546, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (546,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [147, 399]  # the official class counts
    sample = train[10]
    assert sample.image.array.shape == (28, 28) and sample.image.spatial_dims == 2
    assert sample.label == int(labels[10]) and sample.id == "train-000010"
    assert np.shares_memory(sample.image.array, images)  # no copy per sample
    assert not images.flags.writeable and not sample.image.array.flags.writeable
    assert not train.has_subjects() and train.subjects()[:2] == ["train-000000", "train-000001"]


@pytest.mark.realdata
def test_breastmnist_missing_test_split_names_keys(medmnist_dir):
    path = medmnist_dir / "breastmnist.npz"
    with pytest.raises(DatasetError) as info:
        MedMNISTDataset(path, split="test")
    message = str(info.value)
    assert "breastmnist.npz" in message and "'test'" in message
    assert "train_images" in message and "val_labels" in message
    assert "\n" not in message


@pytest.mark.realdata
def test_adrenalmnist3d_real(medmnist_dir):
    train = MedMNISTDataset(medmnist_dir / "adrenalmnist3d.npz")
    val = MedMNISTDataset(medmnist_dir / "adrenalmnist3d.npz", split="val")
    assert (len(train), len(val)) == (1188, 98)
    assert train.spatial_dims == 3 and train.class_names == ["normal", "hyperplasia"]
    images, labels = train.arrays()
    assert images.shape == (1188, 28, 28, 28) and labels.shape == (1188,)
    sample = val[0]
    assert sample.image.array.shape == (28, 28, 28) and sample.image.spatial_dims == 3
    assert medmnist_name(medmnist_dir / "adrenalmnist3d_64.npz") == "adrenalmnist3d"


def test_multilabel_chest_style(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "chestmnist.npz"
    labels = rng.integers(0, 2, (12, 14)).astype(np.uint8)
    images = rng.integers(0, 255, (12, 28, 28), dtype=np.uint8)
    np.savez(path, train_images=images, train_labels=labels)
    ds = MedMNISTDataset(path)
    assert ds.task == "multilabel" and ds.num_classes == 14
    assert ds.class_names[0] == "atelectasis" and ds.class_names[-1] == "hernia"
    assert ds.labels().shape == (12, 14) and ds.labels().dtype == np.float32
    np.testing.assert_array_equal(ds[3].label, labels[3])


def test_rgb_ordinal_retina_style(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "retinamnist_64.npz"
    images = rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    np.savez(path, val_images=images, val_labels=np.arange(6).reshape(6, 1) % 5)
    ds = MedMNISTDataset(path, split="val")
    assert ds.name == "retinamnist" and ds.task == "ordinal" and ds.channels == 3
    arrays, _ = ds.arrays()
    assert arrays.shape == (6, 3, 64, 64)
    image = ds[2].image
    assert image.leading == ("channel",) and image.array.shape == (3, 64, 64)
    np.testing.assert_array_equal(image.array[1], images[2, ..., 1])


def test_unknown_name_counts_classes_over_all_splits(tmp_path):
    path = tmp_path / "mystery.npz"
    z = np.zeros((3, 8, 8), dtype=np.uint8)
    train, val = np.array([[0], [1], [1]]), np.array([[0], [3], [2]])
    np.savez(path, train_images=z, train_labels=train, val_images=z, val_labels=val)
    ds = MedMNISTDataset(path)
    assert ds.class_names == ["0", "1", "2", "3"] and ds.modality is None


def test_table_has_all_official_sets():
    expected = {
        "pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
        "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist",
        "organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d", "vesselmnist3d",
        "synapsemnist3d",
    }  # fmt: skip
    assert set(MEDMNIST_INFO) == expected
    assert len(MEDMNIST_INFO["pathmnist"]["labels"]) == 9
    assert MEDMNIST_INFO["organmnist3d"]["labels"][0] == "liver"  # 3D order differs from 2D


@pytest.mark.parametrize("kind", ["text", "truncated", "npy", "missing", "shape"])
def test_bad_files_raise_dataset_error(tmp_path, kind):
    path = tmp_path / "bad.npz"
    if kind == "text":
        path.write_text("not an archive")
    elif kind == "truncated":
        np.savez(
            path, train_images=np.zeros((50, 28, 28), np.uint8), train_labels=np.zeros((50, 1))
        )
        path.write_bytes(path.read_bytes()[:500])
    elif kind == "npy":
        with path.open("wb") as handle:
            np.save(handle, np.zeros(3))
    elif kind == "shape":
        np.savez(path, train_images=np.zeros((5, 28, 28), np.uint8), train_labels=np.zeros((4, 1)))
    with pytest.raises(DatasetError) as info:
        MedMNISTDataset(path)
    assert "bad.npz" in str(info.value) and "\n" not in str(info.value)
