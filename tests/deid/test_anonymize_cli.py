"""``medlens anonymize``: flags, outputs, summaries and exit codes."""

from __future__ import annotations

import csv
import json
import shutil

import pydicom
import pytest

from medlens.cli.main import main


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "key.bin"
    path.write_bytes(bytes(range(100, 132)))
    return path


def test_folder_with_key_shift_dates_and_map(capsys, real, tmp_path, key):
    source = real("dicom", "mr_t1_brain")
    out, mapping = tmp_path / "out", tmp_path / "owner" / "map.csv"
    code, stdout, _ = run(
        capsys, "anonymize", source, out, "--key", key, "--shift-dates", "--map", mapping
    )
    assert code == 0, stdout
    assert "32 files" in stdout and "32 written" in stdout and "removed" in stdout
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 32
    ds = pydicom.dcmread(files[0])
    original = pydicom.dcmread(next(source.glob("*.dcm")))
    assert ds.PatientID.startswith("ANON-") and ds.PatientName == ds.PatientID
    assert ds.StudyDate != original.StudyDate and len(ds.StudyDate) == 8
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    rows = read_csv(mapping)
    assert rows[0]["pseudonym"] == ds.PatientID and int(rows[0]["date_shift_days"]) <= -365
    assert (tmp_path / "out.audit.csv").exists()
    # the same key again: the same file names (UIDs) and the same bytes
    code, _, _ = run(capsys, "anonymize", source, tmp_path / "again", "--key", key, "--shift-dates")
    again = sorted((tmp_path / "again").rglob("*.dcm"))
    assert code == 0 and [p.relative_to(tmp_path / "again") for p in again] == [
        p.relative_to(out) for p in files
    ]
    assert again[0].read_bytes() == files[0].read_bytes()


def test_single_file_keep_dates_layout_and_json(capsys, real, tmp_path, key):
    source = next(real("dicom", "mr_t1_brain").glob("*.dcm"))
    target = tmp_path / "one.dcm"
    code, stdout, _ = run(
        capsys, "anonymize", source, target, "--key", key, "--keep-dates", "--json"
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["written"] == 1 and summary["attributes_removed"] > 0
    ds = pydicom.dcmread(target)
    assert ds.StudyDate == pydicom.dcmread(source).StudyDate
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    folder = real("dicom", "fmri_epi_phantom")
    code, _, _ = run(capsys, "anonymize", folder, tmp_path / "kept", "--layout", "keep", "--json")
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "kept").iterdir())
    assert names == sorted(p.name for p in folder.iterdir())


def test_bad_requests_exit_non_zero_with_one_line(capsys, real, tmp_path, key):
    source = real("dicom", "mr_t1_brain")
    cases = [
        (["--keep-dates", "--shift-dates"], "exclude each other"),
        (["--keep-private", "some"], "--keep-private"),
        (["--retain", "everything"], "Retain"),
        (["--profile", "strict"], "unknown profile"),
        (["--key", tmp_path / "missing.key"], "key file not found"),
    ]
    for extra, message in cases:
        code, _, err = run(capsys, "anonymize", source, tmp_path / "o", *extra)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    short = tmp_path / "short.key"
    short.write_bytes(b"tiny")
    code, _, err = run(capsys, "anonymize", source, tmp_path / "o", "--key", short)
    assert code == 1 and "fewer than 16 bytes" in err
    code, _, err = run(capsys, "anonymize", tmp_path / "nowhere", tmp_path / "o")
    assert code == 1 and "no such file" in err
    assert not (tmp_path / "o").exists()


def test_a_failed_file_gives_exit_code_1_and_names_it(capsys, real, tmp_path, key):
    source = tmp_path / "in"
    shutil.copytree(real("dicom", "mr_t1_brain"), source)
    (source / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    code, stdout, err = run(capsys, "anonymize", source, tmp_path / "out", "--key", key)
    assert code == 1
    assert "32 written" in stdout and "1 failed" in stdout
    assert "failed broken.dcm:" in err
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 32
