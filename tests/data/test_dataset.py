"""The Dataset base: indexing, subsets, metadata without loading, label-map normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.data import Dataset, Sample, as_label_map
from medlens.data.dataset import Entry
from medlens.image import Image, Role


class Toy(Dataset):
    """Counts loads so tests can see that metadata never reads images."""

    def __init__(self, n: int = 5) -> None:
        self.task = "classification"
        self.class_names = ["a", "b"]
        self.loads = 0
        self.entries = [
            Entry(id=f"s{i}", paths=(), label=i % 2, subject=f"p{i // 2}" if i < 4 else None)
            for i in range(n)
        ]

    def _load(self, index: int) -> Sample:
        self.loads += 1
        e = self.entries[index]
        return Sample(Image(np.full((4, 4), index)), e.label, id=e.id, subject=e.subject)


def test_metadata_does_not_load_images():
    ds = Toy()
    assert ds.ids() == ["s0", "s1", "s2", "s3", "s4"]
    assert ds.subjects() == ["p0", "p0", "p1", "p1", "s4"]  # unknown subject -> own id
    assert ds.has_subjects()
    np.testing.assert_array_equal(ds.labels(), [0, 1, 0, 1, 0])
    assert ds.labels().dtype == np.int64
    assert ds.num_classes == 2
    assert ds.loads == 0


def test_indexing_and_subsets():
    ds = Toy()
    assert ds[-1].id == "s4"
    assert int(ds[2].image.array[0, 0]) == 2
    with pytest.raises(IndexError):
        ds[5]
    part = ds[1:4]
    assert len(part) == 3 and part.ids() == ["s1", "s2", "s3"]
    np.testing.assert_array_equal(part.labels(), [1, 0, 1])
    picked = ds.subset(np.array([4, 0]))
    assert picked.ids() == ["s4", "s0"] and picked.subjects() == ["s4", "p0"]
    assert picked[0].id == "s4" and picked.task == "classification"
    assert [s.id for s in ds[[3, 1]]] == ["s3", "s1"]
    assert [s.id for s in ds] == ds.ids()
    with pytest.raises(IndexError):
        ds.subset([7])


def test_as_label_map_collapses_rgb_and_255():
    mask = np.zeros((3, 6, 7), dtype=np.uint8)
    mask[:, 2:4, 2:5] = 255
    out = as_label_map(Image(mask, leading=("channel",)))
    assert out.array.shape == (6, 7) and out.leading == ()
    assert out.role is Role.LABEL and out.array.dtype == np.uint8
    assert set(np.unique(out.array).tolist()) == {0, 1}
    multi = as_label_map(Image(np.array([[0, 1], [2, 3]], dtype=np.int64)))
    assert multi.array.tolist() == [[0, 1], [2, 3]] and multi.array.dtype == np.uint8
    floats = as_label_map(Image(np.array([[0.0, 1.0], [2.0, 1.0]])))
    assert floats.array.dtype == np.uint8 and floats.array.max() == 2


def test_as_label_map_can_keep_255():
    mask = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    assert as_label_map(Image(mask), binary_255=False).array.max() == 255
