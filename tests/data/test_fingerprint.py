"""Dataset fingerprints: counts, geometry and intensity statistics, JSON-serialisable."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medlens.data import CSVFolderDataset, DecathlonDataset, MedMNISTDataset, fingerprint


@pytest.mark.realdata
def test_breastmnist_fingerprint(medmnist_dir):
    ds = MedMNISTDataset(medmnist_dir / "breastmnist.npz")
    fp = fingerprint(ds)
    json.dumps(fp)
    assert fp["num_samples"] == fp["num_analysed"] == 546
    assert fp["class_counts"] == {"malignant": 147, "normal, benign": 399}
    assert fp["spatial_dims"] == 2 and fp["channels"] == 1 and fp["modality"] == "US"
    assert fp["size"]["median"] == [28, 28] and not fp["anisotropic"]
    stats = fp["intensity"][0]
    images, _ = ds.arrays()
    assert stats["region"] == "all" and stats["n_voxels"] == images.size
    assert stats["mean"] == pytest.approx(images.mean()) and stats["std"] == pytest.approx(
        images.std()
    )
    assert 0 <= stats["p00_5"] < stats["p99_5"] <= 255
    assert fp["num_subjects"] == 546 and not fp["subjects_known"]
    assert fingerprint(ds, max_samples=50)["num_analysed"] == 50


def test_segmentation_fingerprint_uses_foreground(tmp_path, files):
    root = tmp_path / "task"
    for i in range(3):
        image = np.full((6, 8, 8), 10.0, dtype=np.float32)
        label = np.zeros((6, 8, 8), dtype=np.uint8)
        label[2:4, 2:5, 2:6] = 1  # 24 voxels
        label[0, 0, 0] = 2
        image[label > 0] = 100.0 + i
        spacing = (0.7, 0.7, 5.0 + i)
        files.nifti(root / "imagesTr" / f"c{i}_0000.nii.gz", image, spacing)
        files.nifti(root / "labelsTr" / f"c{i}.nii.gz", label, spacing)
    labels = {"background": 0, "organ": 1, "lesion": 2}
    spec = {"channel_names": {"0": "MR"}, "file_ending": ".nii.gz", "labels": labels}
    files.json(root / "dataset.json", spec)
    fp = fingerprint(DecathlonDataset(root), seed=1)
    json.dumps(fp)
    assert fp["task"] == "segmentation" and fp["modality"] == "MR" and fp["spatial_dims"] == 3
    assert fp["label_values"] == [0, 1, 2]
    assert fp["voxel_counts"] == {"0": 3 * (384 - 25), "1": 72, "2": 3}
    assert fp["label_names"] == {"0": "background", "1": "organ", "2": "lesion"}
    assert fp["cases_with_label"]["2"] == 3 and fp["cases_without_foreground"] == 0
    assert fp["size"]["min"] == [8, 8, 6]  # index order (x, y, z)
    np.testing.assert_allclose(fp["spacing"]["median"], [0.7, 0.7, 6.0], rtol=1e-6)
    np.testing.assert_allclose(fp["spacing"]["max"], [0.7, 0.7, 7.0], rtol=1e-6)
    assert fp["anisotropic"] and fp["anisotropy_ratio"] == pytest.approx(6.0 / 0.7, rel=1e-5)
    extent = fp["foreground_extent"]  # bounding box of labels 1 and 2, index order
    assert extent["voxels"]["median"] == [6, 5, 4]
    np.testing.assert_allclose(extent["mm"]["median"], [4.2, 3.5, 24.0], rtol=1e-6)
    np.testing.assert_allclose(extent["mm"]["max"], [4.2, 3.5, 28.0], rtol=1e-6)
    stats = fp["intensity"][0]
    assert stats["region"] == "foreground" and stats["n_voxels"] == 75
    assert stats["mean"] == pytest.approx(101.0) and stats["min"] == 100.0 and stats["max"] == 102.0


def test_multilabel_counts(tmp_path, files, capsys):
    lines = ["path,A,B"]
    for i, (a, b) in enumerate([("1", "-1"), ("0", ""), ("1", "1")]):
        files.png(tmp_path / f"{i}.png", np.full((5, 5), i, dtype=np.uint8))
        lines.append(f"{i}.png,{a},{b}")
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    dataset = CSVFolderDataset(tmp_path / "l.csv", uncertain="ignore", blank="ignore")
    fp = fingerprint(dataset, progress=True)
    assert capsys.readouterr().out == ""  # the progress bar goes to stderr, stdout stays clean
    assert fp["class_counts"] == {"A": 2, "B": 1} and fp["ignored_counts"] == {"A": 0, "B": 2}
    assert fp["task"] == "multilabel" and fp["intensity"][0]["max"] == 2.0
