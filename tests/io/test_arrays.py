"""NumPy ``.npy`` arrays and medlens ``.npz`` images."""

from __future__ import annotations

import re
import zipfile

import numpy as np
import pytest

from medlens.errors import ImageReadError
from medlens.image import Image, Role
from medlens.io import load_image, save_image
from medlens.io.arrays import write_npz


def oblique() -> np.ndarray:
    a = np.deg2rad(33.0)
    return np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])


@pytest.mark.parametrize("compress", [True, False])
def test_npz_round_trip_keeps_everything(tmp_path, compress):
    array = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    image = Image(
        array,
        spacing=(0.5, 0.75, 1.25),
        origin=(-10.0, 20.5, 3.0),
        direction=oblique(),
        role="intensity",
        modality="MR",
        leading=("time",),
        meta={"time_points": [0.0, 2.0], "series_uid": "1.2.3", "path": "/elsewhere"},
    )
    path = write_npz(image, tmp_path / "image.npz", compress=compress)
    back = load_image(path)
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, array)
    assert back.spacing == image.spacing and back.origin == image.origin
    np.testing.assert_array_equal(back.direction, image.direction)  # bit-exact
    assert back.leading == ("time",) and back.modality == "MR" and back.role is Role.INTENSITY
    assert back.meta["time_points"] == [0.0, 2.0] and back.meta["series_uid"] == "1.2.3"
    assert back.meta["path"] == str(path) and back.meta["format"] == "npz"


def test_npz_round_trip_label_2d_and_role_override(tmp_path):
    labels = np.random.default_rng(1).integers(0, 7, size=(9, 11)).astype(np.uint8)
    image = Image(labels, spacing=(0.3, 0.4), origin=(1.0, 2.0), role="label")
    path = save_image(image, tmp_path / "labels.npz")
    back = load_image(path)
    assert back.role is Role.LABEL and back.modality is None and back.leading == ()
    np.testing.assert_array_equal(back.array, labels)
    assert back.array.dtype == np.uint8
    assert load_image(path, role="intensity").role is Role.INTENSITY


def test_npz_metadata_with_numpy_values_is_stored_as_json(tmp_path):
    image = Image(
        np.zeros((2, 3)), meta={"count": np.int64(3), "ratio": np.float32(0.5), "v": np.arange(3)}
    )
    path = save_image(image, tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as archive:  # no pickled objects inside
        assert archive["meta"].dtype.kind == "U"
    back = load_image(path)
    assert back.meta["count"] == 3 and back.meta["ratio"] == 0.5 and back.meta["v"] == [0, 1, 2]


def test_bare_arrays(tmp_path):
    volume = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    np.save(tmp_path / "volume.npy", volume)
    image = load_image(tmp_path / "volume.npy")
    np.testing.assert_array_equal(image.array, volume)
    assert image.spacing == (1.0, 1.0, 1.0) and image.meta["format"] == "npy"
    np.save(tmp_path / "multi.npy", np.zeros((2, 3, 4, 5)))
    assert load_image(tmp_path / "multi.npy").leading == ("channel",)
    np.savez(tmp_path / "single.npz", data=volume)
    np.testing.assert_array_equal(load_image(tmp_path / "single.npz").array, volume)
    assert load_image(tmp_path / "volume.npy", role="label").role is Role.LABEL
    np.save(tmp_path / "big_endian.npy", volume.astype(">f4"))
    image = load_image(tmp_path / "big_endian.npy")
    np.testing.assert_array_equal(image.to_tensor().numpy(), volume)


def test_array_errors(tmp_path):
    np.save(tmp_path / "line.npy", np.zeros(5))
    with pytest.raises(ImageReadError, match="not a 2D or 3D image"):
        load_image(tmp_path / "line.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageReadError, match=re.escape("objects.npy")):
        load_image(tmp_path / "objects.npy")  # pickles are never loaded
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2)), b=np.zeros((2, 2)))
    with pytest.raises(ImageReadError, match="several arrays"):
        load_image(tmp_path / "two.npz")
    np.savez(tmp_path / "mnist.npz", train_images=np.zeros((2, 4, 4)), train_labels=np.zeros(2))
    with pytest.raises(ImageReadError, match="MedMNIST-style dataset"):
        load_image(tmp_path / "mnist.npz")


def test_real_medmnist_archive_is_not_an_image(real):
    path = real("medmnist", "breastmnist.npz")
    with pytest.raises(ImageReadError, match="open it as a dataset") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_corrupt_archives(tmp_path):
    image = Image(np.arange(1000, dtype=np.float64).reshape(10, 10, 10))
    path = save_image(image, tmp_path / "whole.npz")
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=re.escape("cut.npz")):
        load_image(tmp_path / "cut.npz")
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(ImageReadError, match=re.escape("empty.npz")):
        load_image(tmp_path / "empty.npz")
    header = np.lib.format.magic(1, 0) + b"garbage"
    (tmp_path / "bad.npy").write_bytes(header)
    with pytest.raises(ImageReadError, match=re.escape("bad.npy")):
        load_image(tmp_path / "bad.npy")


def test_write_npz_is_atomic(tmp_path, monkeypatch):
    image = Image(np.zeros((3, 4), np.uint8))
    target = save_image(image, tmp_path / "a.npz")
    before = target.read_bytes()

    def failing(handle, **payload):
        handle.write(b"PK\x03\x04partial")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(np, "savez_compressed", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        save_image(Image(np.ones((3, 4), np.uint8)), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]
