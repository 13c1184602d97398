"""Raw k-space files: medlens' .npz round trip, fastMRI and ISMRMRD .h5, and every refusal."""

from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest

from medlens.errors import DatasetError, MedlensError
from medlens.reconstruction.raw import KSpaceData, check_kspace, read_kspace, write_kspace_npz


def kspace(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


@contextlib.contextmanager
def refused(path, problem):
    """A one-line DatasetError that starts with ``path`` and names ``problem``."""
    with pytest.raises(DatasetError, match=f"^{re.escape(str(path))}: .*{problem}") as info:
        yield info
    assert "\n" not in str(info.value)


# medlens' .npz


@pytest.mark.parametrize(
    "shape, with_mask, maps_shape, with_target",
    [
        ((2, 1, 16, 12), False, None, False),
        ((2, 1, 16, 12), True, None, True),
        ((3, 4, 16, 12), True, (4, 16, 12), True),
        ((3, 4, 16, 12), False, (3, 4, 16, 12), False),
    ],
)
def test_npz_round_trip(tmp_path, shape, with_mask, maps_shape, with_target):
    mask = np.zeros(shape[-1], bool)
    mask[::3] = mask[5:7] = True
    k = kspace(shape)
    data = KSpaceData(
        kspace=k * mask if with_mask else k,
        mask=mask if with_mask else None,
        maps=None if maps_shape is None else kspace(maps_shape, seed=1),
        target=np.abs(k).sum(axis=1)[:, 2:10, 1:9].astype(np.float32) if with_target else None,
        meta={"simulated": True, "source": "phantom", "subject": "s1", "acceleration": 4,
              "seed": np.int64(3), "nested": {"lines": [1, 2]}},
    )  # fmt: skip
    path = tmp_path / "case.npz"
    assert write_kspace_npz(path, data) == path
    assert [p.name for p in tmp_path.iterdir()] == ["case.npz"]  # no temporary file left
    back = read_kspace(path)
    assert back.path == path
    assert back.kspace.dtype == np.complex64
    np.testing.assert_array_equal(back.kspace, data.kspace)
    for name in ("mask", "maps", "target"):
        if getattr(data, name) is None:
            assert getattr(back, name) is None
        else:
            np.testing.assert_array_equal(getattr(back, name), getattr(data, name))
    if with_mask:
        assert back.mask.dtype == bool
    assert back.meta == {**data.meta, "seed": 3}
    assert (back.slices, back.coils, back.shape) == (shape[0], shape[1], shape[2:])


def test_npz_without_meta_gets_defaults(tmp_path):
    path = tmp_path / "bare.npz"
    np.savez(path, kspace=kspace((1, 2, 8, 8)))
    meta = read_kspace(path).meta
    assert meta == {"simulated": False, "source": "medlens", "subject": "bare"}


def test_write_refuses_bad_data_and_other_suffixes(tmp_path):
    k = kspace((1, 1, 8, 8))
    with pytest.raises(MedlensError, match=r"ends in \.npz"):
        write_kspace_npz(tmp_path / "case.h5", KSpaceData(kspace=k))
    k[0, 0, 0, 0] = np.nan
    path = tmp_path / "case.npz"
    with refused(path, "NaN or infinite"):
        write_kspace_npz(path, KSpaceData(kspace=k))
    assert not list(tmp_path.iterdir())
    with pytest.raises(MedlensError, match="JSON"):
        write_kspace_npz(path, KSpaceData(kspace=kspace((1, 1, 8, 8)), meta={"x": object()}))
    assert not list(tmp_path.iterdir())


# fastMRI .h5

HEADER = (
    '<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
    "<encodedSpace><matrixSize><x>640</x><y>368</y><z>1</z></matrixSize>"
    "<fieldOfView_mm><x>280</x><y>140</y><z>4.5</z></fieldOfView_mm></encodedSpace>"
    "<reconSpace><matrixSize><x>320</x><y>320</y><z>1</z></matrixSize>"
    "<fieldOfView_mm><x>140</x><y>140</y><z>3</z></fieldOfView_mm></reconSpace>"
    "</encoding></ismrmrdHeader>"
)


def test_fastmri_single_coil(tmp_path):
    h5py = pytest.importorskip("h5py")
    k = kspace((3, 16, 12))
    esc = np.random.default_rng(2).random((3, 10, 10)).astype(np.float32)
    path = tmp_path / "file1000001.h5"
    with h5py.File(path, "w") as f:
        f["kspace"] = k
        f["reconstruction_esc"] = esc
        f["ismrmrd_header"] = HEADER
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["max"] = np.float64(0.0004)
        f.attrs["norm"] = np.float32(0.05)
        f.attrs["patient_id"] = "abc123"
        f.attrs["raw"] = np.bytes_(b"bytes")
    data = read_kspace(path)
    assert data.kspace.shape == (3, 1, 16, 12)
    np.testing.assert_array_equal(data.kspace[:, 0], k)
    assert data.mask is None and data.maps is None
    np.testing.assert_array_equal(data.target, esc)
    meta = data.meta
    assert meta["acquisition"] == "CORPD_FBK" and meta["raw"] == "bytes"
    assert type(meta["max"]) is float and type(meta["norm"]) is float
    assert meta["max"] == 0.0004
    assert (meta["subject"], meta["simulated"], meta["source"]) == ("abc123", False, "fastmri")
    assert meta["encoded_matrix"] == [640, 368, 1] and meta["recon_matrix"] == [320, 320, 1]
    assert meta["encoded_fov_mm"] == [280.0, 140.0, 4.5]


@pytest.mark.parametrize("mask_dtype", [bool, np.float32])
def test_fastmri_multi_coil_test_file_with_mask(tmp_path, mask_dtype):
    h5py = pytest.importorskip("h5py")
    mask = np.zeros(12, bool)
    mask[[0, 4, 5, 6, 9]] = True
    k = kspace((2, 4, 16, 12)) * mask
    rss = np.ones((2, 8, 8), np.float32)
    path = tmp_path / "file_brain_test.h5"
    with h5py.File(path, "w") as f:
        f["kspace"] = k
        f["mask"] = mask.astype(mask_dtype)
        f["reconstruction_rss"] = rss
        f["reconstruction_esc"] = np.zeros((2, 8, 8), np.float32)
        f.attrs["acceleration"] = np.int64(4)
        f.attrs["num_low_frequency"] = np.int32(3)
    data = read_kspace(path)
    np.testing.assert_array_equal(data.kspace, k)
    assert data.mask.dtype == bool
    np.testing.assert_array_equal(data.mask, mask)
    np.testing.assert_array_equal(data.target, rss)  # rss preferred over esc
    assert data.meta["acceleration"] == 4 and type(data.meta["acceleration"]) is int
    assert data.meta["num_low_frequency"] == 3
    assert data.meta["subject"] == "file_brain_test" and data.meta["simulated"] is False


def test_fastmri_refusals(tmp_path):
    h5py = pytest.importorskip("h5py")
    five = tmp_path / "five.h5"
    with h5py.File(five, "w") as f:
        f["kspace"] = kspace((1, 1, 1, 4, 4))
    with refused(five, "fastMRI files hold"):
        read_kspace(five)
    real = tmp_path / "real.h5"
    with h5py.File(real, "w") as f:
        f["kspace"] = np.ones((2, 4, 4), np.float32)
    with refused(real, "not complex"):
        read_kspace(real)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["image"] = np.ones((2, 4, 4), np.float32)
    with refused(other, "neither fastMRI"):
        read_kspace(other)


# ISMRMRD .h5


def ismrmrd_header(xsd, *, z=1, slices=2, channels=4, trajectory="CARTESIAN"):
    space = xsd.encodingSpaceType(
        matrixSize=xsd.matrixSizeType(x=32, y=24, z=z),
        fieldOfView_mm=xsd.fieldOfViewMm(x=256.0, y=192.0, z=5.0),
    )
    return xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=63_500_000),
        subjectInformation=xsd.subjectInformationType(patientID="P42"),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            receiverChannels=channels
        ),
        encoding=[
            xsd.encodingType(
                encodedSpace=space,
                reconSpace=space,
                encodingLimits=xsd.encodingLimitsType(
                    kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=23, center=12),
                    slice=xsd.limitType(minimum=0, maximum=slices - 1, center=0),
                ),
                trajectory=getattr(xsd.trajectoryType, trajectory),
            )
        ],
    )


def write_ismrmrd(path, truth, lines, *, header_options=None, step_2=0):
    """Write ``truth[s, :, :, ky]`` for ``ky`` in ``lines[s]``, after a noise acquisition."""
    ismrmrd = pytest.importorskip("ismrmrd")
    xsd = pytest.importorskip("ismrmrd.xsd")
    header = ismrmrd_header(xsd, **(header_options or {}))
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    dset.write_xml_header(header.toXML("utf-8"))
    noise = ismrmrd.Acquisition.from_array(np.full((truth.shape[1], 7), 99, np.complex64))
    noise.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    dset.append_acquisition(noise)
    for index, measured in enumerate(lines):
        for ky in measured:
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(truth[index, :, :, ky]))
            acq.idx.kspace_encode_step_1 = ky
            acq.idx.kspace_encode_step_2 = step_2
            acq.idx.slice = index
            dset.append_acquisition(acq)
    dset.close()
    return path


def test_ismrmrd_lines_land_where_they_were_measured(tmp_path):
    pytest.importorskip("h5py")
    truth = kspace((2, 4, 32, 24), seed=5)
    measured = [0, 3, 6, 9, 10, 11, 12, 13, 14, 18, 21]
    path = write_ismrmrd(tmp_path / "meas.h5", truth, [measured, measured])
    data = read_kspace(path)
    assert data.kspace.shape == (2, 4, 32, 24)
    mask = np.zeros(24, bool)
    mask[measured] = True
    np.testing.assert_array_equal(data.mask, mask)
    np.testing.assert_array_equal(data.kspace, truth * mask)  # the noise line was skipped
    meta = data.meta
    assert (meta["subject"], meta["simulated"], meta["source"]) == ("P42", False, "ismrmrd")
    assert meta["encoded_matrix"] == [32, 24, 1] and meta["encoded_fov_mm"] == [256, 192, 5]
    assert "lines_differ_by_slice" not in meta


def test_ismrmrd_fully_sampled_and_per_slice_lines(tmp_path):
    pytest.importorskip("h5py")
    truth = kspace((2, 4, 32, 24), seed=6)
    full = read_kspace(write_ismrmrd(tmp_path / "full.h5", truth, [range(24), range(24)]))
    assert full.mask is None
    np.testing.assert_array_equal(full.kspace, truth)
    lines = [[1, 5, 12, 5], [2, 5, 12]]  # line 5 of slice 0 twice: an average, not a sum
    data = read_kspace(write_ismrmrd(tmp_path / "odd.h5", truth, lines))
    assert np.flatnonzero(data.mask).tolist() == [1, 2, 5, 12]  # the union over slices
    assert data.meta["lines_differ_by_slice"] is True
    np.testing.assert_array_equal(data.kspace[0, :, :, 1], truth[0, :, :, 1])
    np.testing.assert_allclose(data.kspace[0, :, :, 5], truth[0, :, :, 5], rtol=1e-6)
    assert not data.kspace[1, :, :, 1].any()


def test_ismrmrd_refusals(tmp_path):
    pytest.importorskip("h5py")
    truth = kspace((2, 4, 32, 24))
    lines = [[11, 12], [11, 12]]
    volume = write_ismrmrd(tmp_path / "z.h5", truth, lines, header_options={"z": 4})
    with refused(volume, "3D encoding"):
        read_kspace(volume)
    step = write_ismrmrd(tmp_path / "step2.h5", truth, lines, step_2=1)
    with refused(step, "kspace_encode_step_2 = 1"):
        read_kspace(step)
    radial = write_ismrmrd(
        tmp_path / "radial.h5", truth, lines, header_options={"trajectory": "RADIAL"}
    )
    with refused(radial, "radial trajectory"):
        read_kspace(radial)
    empty = write_ismrmrd(tmp_path / "slice.h5", truth, [[11, 12], []])
    with refused(empty, r"slice\(s\) \[1\] have no acquisitions"):
        read_kspace(empty)


# validation


def npz_case(tmp_path, **overrides):
    arrays = {"kspace": kspace((2, 3, 8, 6))}
    arrays.update(overrides)
    path = tmp_path / "bad.npz"
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def with_nan(array, index=0):
    array = array.copy()
    array.reshape(-1)[index] = np.nan
    return array


def with_inf(array):
    array = array.copy()
    array.reshape(-1)[-1] = np.inf
    return array


MASK = np.array([1, 0, 1, 1, 0, 1], bool)

BAD = {
    "real": ({"kspace": np.ones((2, 3, 8, 6), np.float32)}, "float32, not complex"),
    "3d": ({"kspace": kspace((3, 8, 6))}, "need 4 dimensions"),
    "empty": ({"kspace": kspace((0, 3, 8, 6))}, "is empty"),
    "nan": ({"kspace": with_nan(kspace((2, 3, 8, 6)))}, "1 NaN or infinite"),
    "inf": ({"kspace": with_inf(kspace((2, 3, 8, 6)))}, "NaN or infinite"),
    "mask length": ({"mask": np.ones(5, bool)}, r"mask of shape \(5,\) .*need \(6,\)"),
    "mask 2d": ({"mask": np.ones((2, 6), bool)}, r"mask of shape \(2, 6\)"),
    "mask values": ({"mask": np.full(6, 0.5)}, "other than 0 and 1"),
    "mask empty": ({"mask": np.zeros(6, bool)}, "measures no phase-encode line"),
    "maps": ({"maps": kspace((3, 8, 5))}, r"coil maps of shape \(3, 8, 5\) .*k-space"),
    "maps coils": ({"maps": kspace((2, 2, 8, 6))}, "coil maps of shape"),
    "maps nan": ({"mask": MASK, "maps": with_nan(kspace((3, 8, 6)))}, "coil maps hold NaN"),
    "target slices": ({"target": np.ones((3, 4, 4), np.float32)}, "3 slice.*the k-space 2"),
    "target 2d": ({"target": np.ones((4, 4), np.float32)}, "target of shape"),
    "meta json": ({"meta": np.array("{not json")}, "meta is not valid JSON"),
    "meta list": ({"meta": np.array("[1, 2]")}, "not an object"),
    "no kspace": ({"kspace": None, "image": np.ones(3)}, "no 'kspace' array"),
}


@pytest.mark.parametrize("case", BAD)
def test_validation_refusals_name_the_file(tmp_path, case):
    overrides, problem = BAD[case]
    path = npz_case(tmp_path, **overrides)
    with refused(path, problem):
        read_kspace(path)


def test_check_kspace_names_the_path_and_normalises(tmp_path):
    path = tmp_path / "memory.npz"
    with refused(path, "coil maps of shape"):
        check_kspace(KSpaceData(kspace=kspace((1, 2, 4, 4)), maps=np.ones((3, 4, 4)), path=path))
    data = check_kspace(
        KSpaceData(
            kspace=kspace((1, 2, 4, 4)).astype(np.complex128),
            mask=np.array([1, 0, 1, 1], np.uint8),
            maps=np.ones((2, 4, 4)),
            target=np.ones((1, 2, 2)),
        )
    )
    assert data.kspace.dtype == data.maps.dtype == np.complex64
    assert data.mask.dtype == bool and data.target.dtype == np.float32


def test_unreadable_files(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive at all")
    with refused(garbage, "cannot read the .npz file"):
        read_kspace(garbage)
    good = tmp_path / "good.npz"
    write_kspace_npz(good, KSpaceData(kspace=kspace((2, 2, 16, 16))))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:300])
    with refused(truncated, "cannot read the .npz file"):
        read_kspace(truncated)
    single = tmp_path / "single.npz"
    np.save(tmp_path / "single.npy", kspace((1, 1, 2, 2)))
    (tmp_path / "single.npy").rename(single)
    with refused(single, "not a .npz archive"):
        read_kspace(single)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, kspace=np.array([{"a": 1}], dtype=object))
    with refused(pickled, "cannot read the .npz file"):
        read_kspace(pickled)
    with refused(tmp_path / "missing.npz", "no such k-space file"):
        read_kspace(tmp_path / "missing.npz")
    with refused(tmp_path, "not a file"):
        read_kspace(tmp_path)
    other = tmp_path / "scan.mat"
    other.write_bytes(b"")
    with refused(other, "unsupported k-space file .mat"):
        read_kspace(other)


def test_unreadable_h5(tmp_path):
    pytest.importorskip("h5py")
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    with refused(broken, "cannot read the HDF5 file"):
        read_kspace(broken)


# undersampling


def test_undersampled_zeroes_unmeasured_lines():
    k = kspace((2, 3, 8, 6))
    data = KSpaceData(kspace=k, mask=MASK)
    under = data.undersampled()
    assert under.dtype == np.complex64 and under.shape == k.shape
    np.testing.assert_array_equal(under[..., MASK], k[..., MASK])
    assert not under[..., ~MASK].any()
    other = np.array([0, 0, 1, 0, 0, 0], bool)
    np.testing.assert_array_equal(data.undersampled(other)[..., 2], k[..., 2])
    assert np.count_nonzero(data.undersampled(other)) == np.count_nonzero(k[..., 2])
    full = KSpaceData(kspace=k).undersampled()
    np.testing.assert_array_equal(full, k)
    assert full is not k
    with pytest.raises(MedlensError, match="mask of shape"):
        data.undersampled(np.ones(4, bool))
