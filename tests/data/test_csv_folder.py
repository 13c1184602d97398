"""CSV + image folder datasets: CheXpert-style findings, label policies, multi-class, errors."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.data import CSVFolderDataset
from medlens.errors import DatasetError

CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Edema"
CHEXPERT_ROWS = [
    ("patient00001/study1/view1_frontal.jpg", "Female,68,Frontal,AP", "1.0,,"),
    ("patient00001/study2/view1_frontal.jpg", "Female,68,Frontal,AP", ",-1.0,1.0"),
    ("patient00002/study1/view1_frontal.jpg", "Male,41,Frontal,PA", ",0.0,-1.0"),
    ("patient00002/study1/view2_lateral.jpg", "Male,41,Lateral,", ",1.0,0.0"),
]


@pytest.fixture
def chexpert(tmp_path, files):
    """CheXpert layout: paths start with the folder the CSV sits in."""
    root = tmp_path / "CheXpert-v1.0-small"
    lines = [CHEXPERT_HEADER]
    for i, (rel, meta, findings) in enumerate(CHEXPERT_ROWS):
        files.png(root / "train" / rel, np.full((16, 20), 10 * i, dtype=np.uint8))
        lines.append(f"CheXpert-v1.0-small/train/{rel},{meta},{findings}")
    csv_path = root / "train.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


def test_chexpert_findings_and_subjects(chexpert):
    ds = CSVFolderDataset(chexpert)
    assert ds.task == "multilabel"
    assert ds.class_names == ["No Finding", "Cardiomegaly", "Edema"]  # Age, Sex are not findings
    assert ds.subjects() == ["patient00001", "patient00001", "patient00002", "patient00002"]
    assert ds.entries[1].study == "patient00001/study2"
    labels = ds.labels()  # default U-Ones, blanks negative
    np.testing.assert_array_equal(labels[1], [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(labels[2], [0.0, 0.0, 1.0])
    assert "ones" in ds.policy
    sample = ds[1]
    assert sample.image.array.shape == (16, 20) and int(sample.image.array[0, 0]) == 10
    assert sample.subject == "patient00001" and sample.meta["line"] == 3
    assert sample.meta["row"]["Sex"] == "Female"


@pytest.mark.parametrize(
    ("uncertain", "blank", "row1", "row2"),
    [
        ("zeros", "zeros", [0, 0, 1], [0, 0, 0]),
        ("ignore", "zeros", [0, np.nan, 1], [0, 0, np.nan]),
        ("ones", "ignore", [np.nan, 1, 1], [np.nan, 0, 1]),
    ],
)
def test_uncertainty_policies(chexpert, uncertain, blank, row1, row2):
    labels = CSVFolderDataset(chexpert, uncertain=uncertain, blank=blank).labels()
    np.testing.assert_array_equal(labels[1], np.array(row1, dtype=np.float32))
    np.testing.assert_array_equal(labels[2], np.array(row2, dtype=np.float32))


def test_unknown_policy(chexpert):
    with pytest.raises(DatasetError, match="uncertain-label policy"):
        CSVFolderDataset(chexpert, uncertain="maybe")
    with pytest.raises(DatasetError, match="blank-label policy"):
        CSVFolderDataset(chexpert, blank="ones")


def test_multiclass_label_column(tmp_path, files):
    lines = ["filename,patient_id,label"]
    for i, label in enumerate(["2", "10", "2", "1"]):
        files.png(tmp_path / "img" / f"{i}.png", np.zeros((4, 4), np.uint8))
        lines.append(f"img/{i}.png,P{i // 2},{label}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    ds = CSVFolderDataset(tmp_path / "labels.csv")
    assert ds.task == "classification"
    assert ds.class_names == ["1", "2", "10"]  # numeric order, not string order
    np.testing.assert_array_equal(ds.labels(), [1, 2, 1, 0])
    assert ds.subjects() == ["P0", "P0", "P1", "P1"]
    assert isinstance(ds[0].label, int)


def test_string_labels_and_image_root(tmp_path, files):
    images = tmp_path / "pictures"
    for name in ("a", "b", "c"):
        files.png(images / f"{name}.png", np.zeros((4, 4), np.uint8))
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "set.csv").write_text("image,diagnosis\na.png,nevus\nb.png,melanoma\nc.png,nevus\n")
    ds = CSVFolderDataset(meta / "set.csv", image_root=images, label_column="diagnosis")
    assert ds.class_names == ["melanoma", "nevus"]
    np.testing.assert_array_equal(ds.labels(), [1, 0, 1])
    assert not ds.has_subjects()
    fixed = CSVFolderDataset(
        meta / "set.csv", image_root=images, label_column="diagnosis", classes=["nevus", "melanoma"]
    )
    np.testing.assert_array_equal(fixed.labels(), [0, 1, 0])


def test_missing_files_reported_up_front(tmp_path, files):
    files.png(tmp_path / "ok.png", np.zeros((4, 4), np.uint8))
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("path,label\nok.png,0\ngone1.png,1\nok.png2,0\n")
    with pytest.raises(DatasetError) as info:
        CSVFolderDataset(csv_path)
    message = str(info.value)
    assert str(csv_path) in message and "2 of 3" in message
    assert "line 3: gone1.png" in message and "line 4: ok.png2" in message
    assert "\n" not in message


def test_malformed_csvs(tmp_path, files):
    files.png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    cases = {
        "nopath.csv": ("name,label\na.png,1\n", "no path column"),
        "nolabel.csv": ("path,notes\na.png,hello\n", "no label columns"),
        "badvalue.csv": ("path,Edema\na.png,2\n", "line 2"),
        "duplicate.csv": ("path,label\na.png,1\na.png,0\n", "listed again"),
        "empty.csv": ("path,label\n", "no rows"),
        "blank_label.csv": ("path,label\na.png,\n", "empty 'label'"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        columns = ["Edema"] if name == "badvalue.csv" else None
        with pytest.raises(DatasetError, match=expected):
            CSVFolderDataset(tmp_path / name, label_columns=columns)
    with pytest.raises(DatasetError, match="does not exist"):
        CSVFolderDataset(tmp_path / "absent.csv")
