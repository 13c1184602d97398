"""De-identification (PS3.15 Annex E) on copies of the real DICOM series, with planted markers."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medlens.deid import EDITION, Deidentifier, Profile, anonymize, burned_in_reason
from medlens.deid.engine import patient_key
from medlens.deid.markers import find_leaks, plant_markers
from medlens.deid.profile import resolve_compound, table_e11

KEY = bytes(range(32))


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def planted(files, folder: Path, profile: Profile | None = None, edit=None) -> dict[str, str]:
    """Copies of ``files`` in ``folder`` with markers in every plantable attribute."""
    folder.mkdir(parents=True, exist_ok=True)
    markers: dict[str, str] = {}
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        markers.update(plant_markers(ds, index, profile))
        if edit is not None:
            edit(index, ds)
        ds.save_as(folder / f"IM{index:04d}.dcm", enforce_file_format=True)
    return markers


def outputs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in outputs(folder)
    }


def by_instance(folder: Path) -> dict[int, pydicom.Dataset]:
    found = {}
    for path in outputs(folder):
        ds = pydicom.dcmread(path)
        found[int(ds.InstanceNumber)] = ds
    return found


@pytest.fixture(scope="module")
def t1_files(real):
    return sorted(real("dicom", "mr_t1_brain").glob("*.dcm"))


@pytest.fixture(scope="module")
def ct_files(real):
    return sorted(p for p in real("totalsegmentator", "ct_dicom_series", "dicom").iterdir())


# ----------------------------------------------------------------------------- the table
def test_table_is_the_standards_with_its_edition():
    rows = table_e11()
    assert EDITION == "2023b"
    assert len(rows) == 611
    action = {row["tag"]: row["basic"] for row in rows}
    assert action["(0010,0010)"] == "Z"  # Patient's Name
    assert action["(0020,000D)"] == "U"  # Study Instance UID
    assert action["(0008,0080)"] == "X/Z/D"  # Institution Name
    assert action["(0008,1140)"] == "X/Z/U*"  # Referenced Image Sequence
    assert action["(60xx,3000)"] == "X"  # Overlay Data
    assert action["(gggg,eeee) where gggg is odd"] == "X"


def test_options_change_the_resolved_actions():
    basic = Profile().rules()
    assert basic.action(0x00080020) == "Z"  # Study Date
    assert Profile(dates="keep").rules().action(0x00080020) == "K"
    assert Profile(dates="shift").rules().action(0x00080020) == "SHIFT"
    assert Profile(private="safe").rules().private == "SAFE"
    assert basic.private == "X"
    assert Profile(retain={"device"}).rules().action(0x00181000) == "K"  # Device Serial Number
    assert basic.action(0x60023000) == "X"  # overlay data of the second plane
    assert basic.action(0x60020010) == "X"  # and the plane's other attributes with it
    assert basic.action(0x50000010) == "X"  # curves
    with pytest.raises(ValueError, match="dates"):
        Profile(dates="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Retain"):
        Profile(retain={"everything"})


def test_compound_actions_follow_the_attribute_type_in_the_iod():
    mr, seg = "mr-image", "segmentation"
    assert resolve_compound("X/Z/D", mr, "InstitutionName", None) == "X"  # Type 3
    assert resolve_compound("Z/D", mr, "ContentDate", None) == "Z"  # Type 2C
    assert resolve_compound("Z/D", seg, "ContentDate", None) == "D"  # Type 1 in a SEG
    assert resolve_compound("X/Z/U*", mr, "ReferencedImageSequence", None) == "X"
    assert resolve_compound("X/Z/U*", seg, "SourceImageSequence", "DerivationImageSequence") == "Z"
    assert resolve_compound("X/Z/D", None, "InstitutionName", None) == "X"  # unknown IOD


# ----------------------------------------------------------------------------- keyed replacements
def test_uids_are_keyed_uuid_derived_and_consistent():
    one, same, other = Deidentifier(key=KEY), Deidentifier(key=KEY), Deidentifier(key=b"k" * 32)
    uid = "1.2.840.113619.2.1.1.1"
    assert one.uid(uid) == same.uid(uid) != other.uid(uid)
    assert one.uid(uid) != one.uid(uid + "0")
    value = one.uid(uid)
    assert value.startswith("2.25.") and len(value) <= 64
    number = int(value[5:])
    assert number < 2**128 and (number >> 76) & 0xF == 8  # UUID version 8
    assert one.pseudonym("id\\FRUIT") == same.pseudonym("id\\FRUIT") != other.pseudonym("id\\FRUIT")
    assert -3653 <= one.shift_days("id\\FRUIT") <= -365
    with pytest.raises(ValueError, match="16 bytes"):
        Deidentifier(key=b"short")


# ----------------------------------------------------------------------------- real series
@pytest.mark.parametrize("folder", ["fmri_epi_human", "fmri_epi_phantom"])
def test_no_marker_survives_in_the_fmri_series(real, folder, tmp_path):
    files = sorted(real("dicom", folder).glob("*.dcm"))[::6]  # every sixth: slices and times
    markers = planted(files, tmp_path / "in")
    assert set(find_leaks(markers, outputs(tmp_path / "in"))) == set(markers)
    summary = anonymize(tmp_path / "in", tmp_path / "out", key=KEY)
    assert summary.written == len(files) and not summary.failed
    assert find_leaks(markers, outputs(tmp_path / "out")) == {}
    data = b"".join(p.read_bytes() for p in outputs(tmp_path / "out"))
    source = pydicom.dcmread(files[0])
    for value in (source.StudyInstanceUID, source.InstitutionName, source.StudyDate):
        assert str(value).encode() not in data


def test_no_marker_survives_in_the_mr_series(t1_files, tmp_path):
    markers = planted(t1_files, tmp_path / "in")
    before = find_leaks(markers, outputs(tmp_path / "in"))
    assert set(before) == set(markers)  # every planted marker is really in the input bytes
    assert len(markers) > 600
    summary = anonymize(tmp_path / "in", tmp_path / "out", key=KEY)
    assert summary.written == len(t1_files) and not summary.failed
    assert find_leaks(markers, outputs(tmp_path / "out")) == {}
    # nor the series' own identifying values
    source = pydicom.dcmread(t1_files[0])
    data = b"".join(p.read_bytes() for p in outputs(tmp_path / "out"))
    for value in (
        source.StudyInstanceUID,
        source.SeriesInstanceUID,
        source.FrameOfReferenceUID,
        source.InstitutionName,
        source.StationName,
        source.DeviceSerialNumber,
        source.StudyDate,
        b"FRUIT",
    ):
        assert (value if isinstance(value, bytes) else str(value).encode()) not in data


def test_ct_series_with_shifted_dates_and_safe_private(ct_files, tmp_path):
    profile = Profile(dates="shift", private="safe")

    def safe_private(index, ds):
        block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
        block.add_new(0x00, "DS", "1.25")  # SUV factor: Table E.3.10-1 lists it as safe
        block.add_new(0x05, "LO", "MRKQ not listed as safe")

    markers = planted(ct_files, tmp_path / "in", profile, edit=safe_private)
    summary = anonymize(tmp_path / "in", tmp_path / "out", key=KEY, profile=profile)
    assert summary.written == len(ct_files) and summary.kept > 0
    assert find_leaks(markers, outputs(tmp_path / "out")) == {}
    assert b"MRKQ not listed" not in b"".join(p.read_bytes() for p in outputs(tmp_path / "out"))
    original = pydicom.dcmread(tmp_path / "in" / "IM0000.dcm")  # with its planted values
    ds = by_instance(tmp_path / "out")[int(original.InstanceNumber)]
    assert ds[0x70531000].value == "1.25" and ds[0x70530010].value == "Philips PET Private Group"
    assert 0x70531005 not in ds
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    shift = Deidentifier(key=KEY).shift_days(patient_key(original))  # from the Patient ID
    moved = np.datetime64(_iso(original.StudyDate)) + np.timedelta64(shift, "D")
    assert _iso(ds.StudyDate) == str(moved)
    assert ds.StudyTime == original.StudyTime  # whole-day shifts keep the time of day
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113111", "113107"]
    assert ds.PatientIdentityRemoved == "YES"


def _iso(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:8]}"


def test_series_loads_as_the_same_volume_with_identical_pixel_bytes(
    t1_files, ct_files, t1_image, ct_image, tmp_path
):
    from medlens.io import load_image

    for files, image, name in ((t1_files, t1_image, "mr"), (ct_files, ct_image, "ct")):
        out = tmp_path / name
        anonymize(files[0].parent, out, key=KEY)
        series = {p.parent for p in outputs(out)}
        assert len(series) == 1
        again = load_image(series.pop())
        np.testing.assert_array_equal(again.array, image.array)
        np.testing.assert_allclose(again.affine, image.affine, atol=1e-6)
        written = by_instance(out)
        for path in files:
            source = pydicom.dcmread(path)
            assert written[int(source.InstanceNumber)].PixelData == source.PixelData


def test_uids_consistent_within_series_across_runs_and_keys(t1_files, tmp_path):
    anonymize(t1_files[0].parent, tmp_path / "a", key=KEY)
    anonymize(t1_files[0].parent, tmp_path / "b", key=KEY)
    anonymize(t1_files[0].parent, tmp_path / "c", key=b"another key of 32 bytes........")
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")  # same key, same bytes
    a, c = by_instance(tmp_path / "a"), by_instance(tmp_path / "c")
    number = min(a)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID"):
        assert len({str(ds.get(key)) for ds in a.values()}) == 1
        assert a[number].get(key) != c[number].get(key)
    assert len({ds.SOPInstanceUID for ds in a.values()}) == len(t1_files)
    for ds in a.values():
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPInstanceUID.startswith("2.25.")
        assert ds.file_meta.ImplementationVersionName.startswith("MEDLENS")
        assert ds.preamble == b"\0" * 128


def test_references_still_resolve(t1_files, t1_image, tmp_path):
    """A SEG referencing the series, and a reference inside a kept sequence, still resolve."""
    import highdicom as hd

    from medlens.io.dicomseg import write_dicom_seg

    source = tmp_path / "in" / "mr"
    shutil.copytree(t1_files[0].parent, source)
    labels = t1_image.replace(array=(t1_image.array > np.percentile(t1_image.array, 90)))
    labels = labels.replace(array=labels.array.astype(np.uint8))
    write_dicom_seg(labels, source, tmp_path / "in" / "seg" / "seg.dcm", label_values=[0, 1])
    first = pydicom.dcmread(t1_files[0])
    second = source / t1_files[1].name
    ds = pydicom.dcmread(second)
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = first.SOPClassUID
    item.ReferencedSOPInstanceUID = first.SOPInstanceUID
    ds.ReferencedInstanceSequence = [item]  # not in Table E.1-1: kept, its UIDs replaced
    ds.save_as(second)
    anonymize(tmp_path / "in", tmp_path / "out", key=KEY)
    datasets = [pydicom.dcmread(p) for p in outputs(tmp_path / "out")]
    segs = [d for d in datasets if d.Modality == "SEG"]
    images = {d.SOPInstanceUID: d for d in datasets if d.Modality == "MR"}
    assert len(segs) == 1 and len(images) == len(t1_files)
    seg = segs[0]
    referenced = [
        instance.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for instance in series.ReferencedInstanceSequence
    ]
    assert referenced and set(referenced) <= set(images)
    one_image = next(iter(images.values()))
    assert seg.FrameOfReferenceUID == one_image.FrameOfReferenceUID
    assert seg.StudyInstanceUID == one_image.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == one_image.SeriesInstanceUID
    reread = hd.seg.segread(outputs(tmp_path / "out")[datasets.index(seg)])
    assert reread.number_of_segments == 1
    pointing = [d for d in images.values() if "ReferencedInstanceSequence" in d]
    assert len(pointing) == 1
    target = pointing[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert target in images and int(images[target].InstanceNumber) == int(first.InstanceNumber)


def test_bad_files_are_reported_and_the_rest_go_on(t1_files, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for path in t1_files[:3]:
        shutil.copy(path, source / path.name)
    data = t1_files[3].read_bytes()
    (source / "truncated.dcm").write_bytes(data[: len(data) // 3])
    (source / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x01\x02" * 50)
    (source / "empty.dcm").write_bytes(b"")
    (source / "notes.txt").write_text("not an image")
    before = tree_digest(source)
    summary = anonymize(source, tmp_path / "out", key=KEY)
    assert summary.written == 3
    failed = {path for path, _ in summary.failed}
    assert failed == {"truncated.dcm", "garbage.dcm", "empty.dcm"}
    assert summary.not_dicom == ["notes.txt"]
    assert tree_digest(source) == before  # the input is never modified
    assert not [p for p in (tmp_path / "out").rglob(".*")]  # no temporary files left
    rows = read_csv(summary.audit)
    assert {r["input"] for r in rows if r["status"] == "failed"} == failed
    assert any("truncated" in r["action"] for r in rows if r["input"] == "truncated.dcm")


def test_burned_in_images_are_skipped_unless_allowed(t1_files, tmp_path):
    def flag(index, ds):
        if index == 0:
            ds.BurnedInAnnotation = "YES"
        if index == 1:
            ds.Modality = "US"

    planted(t1_files[:4], tmp_path / "in", edit=flag)
    summary = anonymize(tmp_path / "in", tmp_path / "out", key=KEY)
    assert summary.written == 2
    reasons = dict(summary.skipped)
    assert "Burned In Annotation is YES" in reasons["IM0000.dcm"]
    assert "ultrasound" in reasons["IM0001.dcm"]
    allowed = anonymize(tmp_path / "in", tmp_path / "out2", key=KEY, allow_burned_in=True)
    assert allowed.written == 4 and not allowed.skipped
    ds = pydicom.dcmread(t1_files[0])
    ds.BurnedInAnnotation = "NO"
    ds.Modality = "US"
    assert burned_in_reason(ds) is None  # the modality's habit yields to an explicit NO


def test_audit_log_and_mapping_name_no_removed_values(t1_files, tmp_path):
    markers = planted(t1_files[:4], tmp_path / "in")
    mapping = tmp_path / "owner" / "map.csv"
    summary = anonymize(tmp_path / "in", tmp_path / "out", key=KEY, mapping=mapping)
    audit = Path(summary.audit)
    assert audit == tmp_path / "out.audit.csv"  # beside the output, not inside it
    text = audit.read_text()
    assert find_leaks(markers, [audit]) == {}
    rows = read_csv(audit)
    actions = {(r["attribute"], r["action"]) for r in rows}
    assert ("PatientName", "pseudonym") in actions
    assert ("InstitutionName", "removed") in actions
    assert ("StudyInstanceUID", "uid") in actions
    assert "PatientIdentityRemoved" in text
    assert summary.removed > 0 and summary.replaced > 0
    lines = read_csv(mapping)
    assert len(lines) == 1 and "PatientID" in markers[lines[0]["patient_id"]]  # the planted one
    assert lines[0]["pseudonym"] == pydicom.dcmread(outputs(tmp_path / "out")[0]).PatientID
    assert (mapping.stat().st_mode & 0o777) == 0o600
    from medlens.errors import MedlensError

    with pytest.raises(MedlensError, match="mapping file"):
        anonymize(tmp_path / "in", tmp_path / "o3", key=KEY, mapping=tmp_path / "o3" / "m.csv")
    with pytest.raises(MedlensError, match="inside the input"):
        anonymize(tmp_path / "in", tmp_path / "in" / "out", key=KEY)


def test_worker_processes_give_the_same_files(t1_files, tmp_path):
    anonymize(t1_files[0].parent, tmp_path / "one", key=KEY)
    summary = anonymize(t1_files[0].parent, tmp_path / "two", key=KEY, workers=2)
    assert summary.written == len(t1_files)
    assert tree_digest(tmp_path / "one") == tree_digest(tmp_path / "two")


def test_dicomdir_file_set(t1_files, tmp_path):
    from pydicom.fileset import FileSet

    staging = tmp_path / "staging"
    planted(t1_files[:5], staging)
    fs = FileSet()
    for path in sorted(staging.iterdir()):
        fs.add(pydicom.dcmread(path))
    fs.write(tmp_path / "in")
    markers = {}
    for path in sorted(staging.iterdir()):
        markers.update(plant_markers(pydicom.dcmread(path), 0))  # same values as planted
    summary = anonymize(tmp_path / "in" / "DICOMDIR", tmp_path / "out", key=KEY)
    assert summary.written == 6 and not summary.failed  # 5 instances and the DICOMDIR
    out = FileSet(tmp_path / "out" / "DICOMDIR")
    instances = list(out)
    assert len(instances) == 5
    for instance in instances:
        ds = instance.load()  # the record's file exists and is the de-identified instance
        assert instance.SOPInstanceUID == ds.SOPInstanceUID
        assert ds.PatientID == instance.PatientID and ds.PatientID.startswith("ANON-")
        assert ds.StudyInstanceUID == instance.StudyInstanceUID
    dicomdir = tmp_path / "out" / "DICOMDIR"
    assert b"FRUIT" not in dicomdir.read_bytes()
    assert find_leaks(markers, [dicomdir]) == {}


def test_nifti_header_text_and_extensions_are_removed(real, tmp_path):
    import nibabel as nib

    image = nib.load(real("totalsegmentator", "ct_small", "example_ct_sm.nii.gz"))
    header = image.header.copy()
    header["descrip"] = b"MRKQ Doe^Jane 20190301"
    header["aux_file"] = b"MRKQ aux"
    header["intent_name"] = b"MRKQ intent"
    header["db_name"] = b"MRKQ db"
    marked = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, header)
    marked.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"MRKQ comment extension"))
    source = tmp_path / "in" / "ct.nii.gz"
    source.parent.mkdir()
    nib.save(marked, source)
    summary = anonymize(source, tmp_path / "out", key=KEY)
    assert summary.nifti == 1
    out = tmp_path / "out" / "ct.nii.gz"
    import gzip

    assert b"MRKQ" not in gzip.decompress(out.read_bytes())
    again = nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(again.dataobj), np.asanyarray(image.dataobj))
    np.testing.assert_allclose(again.affine, image.affine)
    assert len(again.header.extensions) == 0
    rows = read_csv(summary.audit)
    assert {"descrip", "aux_file", "intent_name", "db_name", "extensions"} <= {
        r["attribute"] for r in rows
    }


def test_public_tags_the_standard_does_not_define_are_removed(t1_files, tmp_path):
    """A name under an undefined public tag (a vendor's misuse, or damage) must not survive."""

    def edit(index, ds):
        ds.add_new(0x00100011, "LO", "Undefined^Tagged^Name")  # not in PS3.6
        ds.add_new(0x00291234, "LO", "private stays private")  # odd group: the private rule

    src, out = tmp_path / "in", tmp_path / "out"
    planted(t1_files[:1], src, edit=edit)
    anonymize(src, out)
    (written,) = outputs(out)
    data = written.read_bytes()
    assert b"Undefined^Tagged^Name" not in data and b"private stays" not in data
    rows = read_csv(f"{out}.audit.csv")
    assert any(r["tag"] == "(0010,0011)" and r["action"] == "removed" for r in rows)


def test_values_that_swallowed_other_elements_are_not_kept(t1_files, tmp_path):
    """A damaged length makes a kept value swallow the elements after it (found by fuzzing a
    DICOMDIR with --retain uids): a UID that is not one is replaced, other damaged values go."""
    swallowed = "\x10\x00\x10\x00PN\x0c\x00SECRET^NAME"

    def edit(index, ds):
        ds.add_new(0x0020000D, "UI", "1.2.826.0.1.3680043.10.1051.762\x00 " + swallowed)
        ds.add_new(0x00080008, "CS", ["ORIGINAL", "PRIMARY" + swallowed.replace("^", "_")])

    src, out = tmp_path / "in", tmp_path / "out"
    planted(t1_files[:1], src, edit=edit)
    anonymize(src, out, profile=Profile(retain=frozenset({"uids"})))
    (written,) = outputs(out)
    data = written.read_bytes()
    assert b"SECRET" not in data
    ds = pydicom.dcmread(written)
    assert str(ds.StudyInstanceUID).startswith("2.25.") and "ImageType" not in ds
    assert ds.SeriesInstanceUID == pydicom.dcmread(src / "IM0000.dcm").SeriesInstanceUID


def test_a_retained_instance_uid_that_is_not_one_never_names_the_output(t1_files, tmp_path):
    """Found by fuzzing: the data set's SOP Instance UID cut away, the file meta's holding the
    bytes of an identifying attribute; with --retain uids it named the output file."""
    src, out = tmp_path / "in", tmp_path / "out"

    def edit(index, ds):
        del ds.SOPInstanceUID
        ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3\x00SECRET_ADDRESS"

    planted(t1_files[:1], src, edit=edit)
    anonymize(src, out, profile=Profile(retain=frozenset({"uids"})))
    (written,) = outputs(out)
    assert "SECRET" not in str(written) and b"SECRET" not in written.read_bytes()
    assert written.stem.startswith("2.25.")
