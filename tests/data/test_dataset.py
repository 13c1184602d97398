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


# ----------------------------------------------------------------------------- extra fields
def test_sample_defaults_and_positional_construction_are_unchanged():
    image = Image(np.zeros((4, 5), dtype=np.float32))
    sample = Sample(image, 1, None, "a", "p", "s", {"k": 1})
    assert (sample.label, sample.id, sample.subject, sample.study) == (1, "a", "p", "s")
    assert sample.meta == {"k": 1} and sample.fields == {} and sample.kinds == {}
    assert sample.times is None and not sample.has_time


def test_batch_arrays_put_time_first_and_always_a_channel():
    rng = np.random.default_rng(0)
    layouts = {
        (): ((6, 7), (1, 6, 7)),
        ("channel",): ((2, 6, 7), (2, 6, 7)),
        ("time",): ((3, 6, 7), (3, 1, 6, 7)),
        ("time", "channel"): ((3, 2, 6, 7), (3, 2, 6, 7)),
        ("channel", "time"): ((2, 3, 6, 7), (3, 2, 6, 7)),
    }
    for leading, (shape, expected) in layouts.items():
        array = rng.normal(size=shape).astype(np.float32)
        out = Sample(Image(array, leading=leading)).batch_arrays()["image"]
        assert out.shape == expected, leading
        if leading == ("channel", "time"):
            np.testing.assert_array_equal(out[1, 0], array[0, 1])
    assert Sample(Image(np.zeros((3, 6, 7)), leading=("time",))).has_time


def _extras_sample(seed: int, frames: int = 3) -> Sample:
    rng = np.random.default_rng(seed)
    image = Image(rng.normal(size=(frames, 6, 7)).astype(np.float32), leading=("time",),
                  spacing=(0.5, 2.0))  # fmt: skip
    mask = Image((rng.random((6, 7)) > 0.5).astype(np.uint8), role=Role.LABEL, spacing=(0.5, 2.0))
    return Sample(
        image,
        mask=mask,
        id=f"s{seed}",
        fields={
            "flow": rng.normal(size=(frames, 2, 6, 7)).astype(np.float32),
            "fixed": Image(rng.normal(size=(6, 7)).astype(np.float32)),
            "organs": Image(np.zeros((6, 7), dtype=np.int16), role=Role.LABEL),
            "boxes": np.array([[0.5, 1.5, 3.5, 4.5]]),
            "found": np.array([[1.0, 2.0], [3.0, 4.0]]),
            "heat": np.zeros((1, 6, 7), dtype=np.float64),
        },
        kinds={"fixed": "spatial", "found": "points"},
        times=tuple(float(t) for t in range(frames)),
    )


def test_batch_kinds_from_kinds_names_roles_and_dtypes():
    kinds = _extras_sample(0).batch_kinds()
    assert kinds == {
        "image": "image",
        "label": "label",
        "flow": "displacement",  # from its name
        "fixed": "spatial",  # given
        "organs": "label",  # the Image's role
        "boxes": "boxes",  # from its name
        "found": "points",  # given
        "heat": "image",  # float array
    }
    odd = Sample(Image(np.zeros((4, 4))), fields={"notes": np.array(["a", "b"])})
    with pytest.raises(ValueError, match="say the kind"):
        odd.batch_kinds()
    clash = Sample(Image(np.zeros((4, 4))), fields={"image": np.zeros((1, 4, 4))})
    with pytest.raises(ValueError, match="clashes"):
        clash.batch_arrays()


def test_samples_become_a_batch_that_transforms_move():
    import torch

    from medlens.transforms import Batch, Compose, RandomFlip

    samples = [_extras_sample(0), _extras_sample(1)]
    batch = Batch.from_samples(samples)
    assert batch.kinds == samples[0].batch_kinds()
    assert batch["image"].shape == (2, 3, 1, 6, 7) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (2, 1, 6, 7) and batch["label"].dtype == torch.int64
    assert batch["flow"].shape == (2, 3, 2, 6, 7) and batch["heat"].dtype == torch.float32
    assert batch.timed("image") and batch.timed("flow") and not batch.timed("label")
    assert batch.num_frames == 3 and batch.spatial_shape == (6, 7)
    assert [tuple(p.shape) for p in batch["found"]] == [(2, 2), (2, 2)]
    assert batch.spacing_tensor().tolist() == [[0.5, 2.0], [0.5, 2.0]]
    assert batch.meta["times"] == [(0.0, 1.0, 2.0)] * 2
    np.testing.assert_array_equal(batch["flow"][1].numpy(), samples[1].fields["flow"])
    out = Compose([RandomFlip(axes=1, p=1.0)])(batch)  # x flips: the x component negates
    assert torch.equal(out["flow"][:, :, 0], -batch["flow"][:, :, 0].flip(-1))
    assert torch.equal(out["fixed"], batch["fixed"].flip(-1))
    with pytest.raises(ValueError, match="different shapes"):
        Batch.from_samples([_extras_sample(0), _extras_sample(1, frames=2)])
    with pytest.raises(ValueError, match="at least one"):
        Batch.from_samples([])


def test_imports_go_downward_only():
    """The dataset model never imports transforms at import time, nor transforms data."""
    import subprocess
    import sys

    for code in (
        "import sys, medlens.data.dataset; assert 'medlens.transforms' not in sys.modules",
        "import sys, medlens.transforms; assert 'medlens.data' not in sys.modules",
    ):
        subprocess.run([sys.executable, "-c", code], check=True)
