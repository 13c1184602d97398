"""open_dataset: format detection for every layout, and clear errors when nothing matches."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.data import (
    CSVFolderDataset,
    DecathlonDataset,
    HC18Dataset,
    MedMNISTDataset,
    PairedFolderDataset,
    detect_format,
    open_dataset,
)
from medlens.errors import DatasetError


def _decathlon(root, files):
    files.nifti(root / "imagesTr" / "a_0000.nii.gz", np.zeros((2, 3, 4), np.float32))
    files.nifti(root / "labelsTr" / "a.nii.gz", np.zeros((2, 3, 4), np.uint8))
    spec = {
        "channel_names": {"0": "CT"},
        "file_ending": ".nii.gz",
        "labels": {"background": 0, "x": 1},
    }
    files.json(root / "dataset.json", spec)
    return root


def test_detects_each_layout(tmp_path, files):
    npz = tmp_path / "pneumoniamnist.npz"
    np.savez(npz, val_images=np.zeros((2, 28, 28), np.uint8), val_labels=np.zeros((2, 1)))
    ds = open_dataset(npz, split="val")
    assert isinstance(ds, MedMNISTDataset) and len(ds) == 2

    task = _decathlon(tmp_path / "task", files)
    assert isinstance(open_dataset(task), DecathlonDataset)
    assert isinstance(open_dataset(task / "dataset.json"), DecathlonDataset)

    paired = tmp_path / "paired"
    files.png(paired / "images" / "x.png", np.zeros((4, 4), np.uint8))
    files.png(paired / "masks" / "x_mask.png", np.zeros((4, 4), np.uint8))
    assert isinstance(open_dataset(paired), PairedFolderDataset)

    table = tmp_path / "table"
    files.png(table / "x.png", np.zeros((4, 4), np.uint8))
    (table / "labels.csv").write_text("path,label\nx.png,cat\n")
    assert isinstance(open_dataset(table), CSVFolderDataset)
    csv_ds = open_dataset(table / "labels.csv", classes=["cat", "dog"])
    assert csv_ds.class_names == ["cat", "dog"]

    hc18 = files.hc18(tmp_path / "hc18", {"000_HC.png": (0.1, 50.0)})
    assert detect_format(hc18) == "hc18"  # before the single-CSV rule
    ds = open_dataset(hc18)
    assert isinstance(ds, HC18Dataset) and ds[0].mask.array.sum() > 500


@pytest.mark.realdata
def test_real_folders(medmnist_dir, hc18_root):
    assert isinstance(open_dataset(medmnist_dir / "adrenalmnist3d.npz"), MedMNISTDataset)
    ds = open_dataset(hc18_root, limit=2)
    assert isinstance(ds, HC18Dataset) and ds.subjects() == ["000", "001"]


def test_clear_errors(tmp_path, files):
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty folder"):
        open_dataset(empty)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError) as info:
        open_dataset(odd)
    message = str(info.value)
    assert str(odd) in message and "dataset.json" in message and "masks/" in message
    (odd / "a.csv").write_text("x\n")
    (odd / "b.csv").write_text("x\n")
    with pytest.raises(DatasetError, match="2 CSV files"):
        open_dataset(odd)
    npz = tmp_path / "plain.npz"
    np.savez(npz, weights=np.zeros(3))
    with pytest.raises(DatasetError, match=r"no \*_images keys \(keys: weights\)"):
        open_dataset(npz)
    with pytest.raises(DatasetError, match="not a dataset file"):
        open_dataset(odd / "notes.txt")
