"""Fuzzing the command line (issue 16): a bounded property run per reader, and regressions.

Every reader gets a few dozen mutated real inputs (hypothesis picks the mutation seeds,
derandomized so CI sees the same inputs every run); each runs in a sandbox through ``medlens info``
(and ``anonymize`` for DICOM and NIfTI) and must exit 0 or 1 without a traceback, say a failure in
one line, write only its output and audit log, leave its inputs as they were and leak no planted
identifier (see :mod:`medlens.testing.fuzz`). ``benchmarks/fuzz.py`` runs the same cases longer.
Then the cases issue 16 names, and one test per crash the fuzzer found, kept as regressions.
"""

from __future__ import annotations

import csv
import io
import json
import re
import struct
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from medlens.cli.main import main  # noqa: E402
from medlens.testing.corpus import READERS, build_corpus  # noqa: E402
from medlens.testing.fuzz import Fuzzer  # noqa: E402
from medlens.testing.mutate_formats import lenient_pydicom  # noqa: E402

pytestmark = pytest.mark.slow
EXAMPLES = 50  # per reader: about 2.5 s each on 2 cores; benchmarks/fuzz.py runs thousands
ESCAPED = "../../x/ESCAPED"


@pytest.fixture(scope="module")
def fuzzer(data_root, tmp_path_factory) -> Fuzzer:
    corpus = build_corpus(data_root, tmp_path_factory.mktemp("corpus"))
    return Fuzzer(corpus, tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("reader", READERS)
def test_mutated_inputs_fail_cleanly(fuzzer, reader):
    if reader not in fuzzer.corpus:
        pytest.skip(f"no seed for {reader} in the data folder")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.integers(min_value=0, max_value=2**32 - 1))
    def check(number: int) -> None:
        case = fuzzer.case(reader, number)
        assert not case.problems, case.describe()

    check()


# ------------------------------------------------------------------------------------ helpers
def _dicom(data: bytes, change) -> bytes:
    """``data`` (a DICOM file) read, changed by ``change(ds)``, written back as it was."""
    import pydicom

    with lenient_pydicom():
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        change(ds)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _seed(fuzzer, reader: str, name: str | None = None):
    seeds = fuzzer.corpus.get(reader) or []
    for seed in seeds:
        if name is None or seed.name == name:
            return seed
    pytest.skip(f"no {reader} seed {name or ''} in the data folder")


def _run(runs, command: str):
    return next(run for run in runs if run.argv[0] == command)


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


# ------------------------------------------------------------------------- issue 16's cases
def test_retained_uids_that_climb_out_write_only_into_the_output(fuzzer):
    seed = _seed(fuzzer, "dicom-file", "mr")

    def escape(ds) -> None:
        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            setattr(ds, keyword, ESCAPED)
        ds.file_meta.MediaStorageSOPInstanceUID = ESCAPED

    files = {"slice.dcm": _dicom(seed.files["slice.dcm"], escape)}
    case = fuzzer.run(seed, files, options=("--retain", "uids"), keep=True)
    assert not case.problems, case.describe()
    anonymize = _run(case.runs, "anonymize")
    assert anonymize.code == 0, anonymize.err
    written = [p for p in (case.box / "out").rglob("*") if p.is_file()]
    assert len(written) == 1 and ".." not in written[0].relative_to(case.box / "out").parts
    root = case.box.parents[3]  # the case folder: a/b/c/box sits three folders down
    assert not [p for p in root.rglob("*ESCAPED*") if case.box / "out" not in p.parents]


def test_dicomdir_record_outside_the_file_set_is_refused(fuzzer):
    seed = _seed(fuzzer, "dicomdir")
    files = dict(seed.files)

    def outside(ds) -> None:  # the last record: nothing after it moves, the offsets stay valid
        records = list(ds.DirectoryRecordSequence)
        last = max(records, key=lambda record: record.seq_item_tell)
        assert last.DirectoryRecordType == "IMAGE"
        last.ReferencedFileID = ["..", "outside", "IM_OUT"]

    files["fs/DICOMDIR"] = _dicom(files["fs/DICOMDIR"], outside)
    files["outside/IM_OUT"] = next(v for k, v in files.items() if "/IM" in k)  # it exists
    case = fuzzer.run(seed, files, options=("--layout", "keep"), keep=True)
    assert not case.problems, case.describe()
    anonymize = _run(case.runs, "anonymize")
    assert anonymize.code == 1
    failed = [line for line in anonymize.err.splitlines() if line.startswith("failed DICOMDIR")]
    assert len(failed) == 1 and "outside the file-set folder" in failed[0], anonymize.err
    assert not (case.box / "out" / "DICOMDIR").exists()
    assert not list(case.box.rglob("IM_OUT*"))[1:]  # only the input's own copy
    info = _run(case.runs, "info")
    assert info.code == 1 and "outside its file-set folder" in _one_line(info.err)


@pytest.fixture
def key(tmp_path) -> Path:
    path = tmp_path / "key.bin"
    path.write_bytes(bytes(range(7, 39)))
    return path


def test_adding_to_an_export_needs_its_key(real, tmp_path, key, capsys):
    slices = sorted(real("dicom", "mr_t1_brain").glob("*.dcm"))
    out = tmp_path / "export"
    assert main(["anonymize", str(slices[0]), str(out), "--key", str(key)]) == 0
    audit = tmp_path / "export.audit.csv"
    earlier = _rows(audit)
    capsys.readouterr()

    assert main(["anonymize", str(slices[1]), str(out)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: ") and "already holds files" in line and "--key" in line
    assert _rows(audit) == earlier

    assert main(["anonymize", str(slices[1]), str(out), "--key", str(key)]) == 0
    rows = _rows(audit)
    assert rows[: len(earlier)] == earlier and len(rows) > len(earlier)
    assert {row[0] for row in rows[1:] if row[1] == "written"} == {slices[0].name, slices[1].name}
    assert len(list(out.rglob("*.dcm"))) == 2


def test_output_dot_puts_the_audit_log_beside_the_working_folder(real, tmp_path, key, monkeypatch):
    source = sorted(real("dicom", "mr_t1_brain").glob("*.dcm"))[0]
    export = tmp_path / "export"
    export.mkdir()
    monkeypatch.chdir(export)
    assert main(["anonymize", str(source), ".", "--key", str(key)]) == 0
    assert (tmp_path / "export.audit.csv").is_file()
    assert not list(export.glob("*.audit.csv")) and not (tmp_path / ".audit.csv").exists()
    assert len(list(export.rglob("*.dcm"))) == 1


# --------------------------------------------------------------- crashes the fuzzer found
def _npy_header(data: bytes, old: str, new: str) -> bytes:
    end = data.index(b"\n") + 1
    header = data[:end].decode("latin-1").replace(old, new).rstrip("\n")
    header += " " * ((64 - (len(header) + 1) % 64) % 64) + "\n"
    raw = header.encode("latin-1")
    return raw[:8] + (len(raw) - 10).to_bytes(2, "little") + raw[10:] + data[end:]


def _npz_without(data: bytes, key: str, replacement: bytes | None = None) -> bytes:
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if n != f"{key}.npy"}
    if replacement is not None:
        members[f"{key}.npy"] = replacement
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, value in members.items():
            archive.writestr(name, value)
    return buffer.getvalue()


def _nifti_field(data: bytes, offset: int, code: str, value) -> bytes:
    import gzip

    packed = data[:2] == b"\x1f\x8b"
    raw = bytearray(gzip.decompress(data) if packed else data)
    struct.pack_into("<" + code, raw, offset, value)
    return gzip.compress(bytes(raw), mtime=0) if packed else bytes(raw)


def _set(**values):
    def change(ds) -> None:
        for keyword, value in values.items():
            if keyword == "MediaStorageSOPInstanceUID":
                ds.file_meta.MediaStorageSOPInstanceUID = value
            elif value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)

    return change


def _deflated(ds) -> None:
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"  # written deflated


def _corrupt(data: bytes, start: int, size: int) -> bytes:
    return data[:start] + bytes(b ^ 0x5A for b in data[start : start + size]) + data[start + size :]


def _with_command_element(data: bytes) -> bytes:
    """(0000,0100) Command Field, US 1, first in the data set (pydicom will not write one)."""
    end = 144 + struct.unpack_from("<I", data, 140)[0]  # after the file meta group
    return data[:end] + b"\x00\x00\x00\x01US\x02\x00\x01\x00" + data[end:]


def _npy_unicode_beyond_range() -> bytes:
    """A ``<U1`` array whose one character is 0xFFFFFFFF: no code point at all."""
    header = "{'descr': '<U1', 'fortran_order': False, 'shape': (), }"
    header = header.ljust(64 - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\xff" * 4


def _null_in_file_id(ds) -> None:
    record = next(r for r in ds.DirectoryRecordSequence if "ReferencedFileID" in r)
    record.ReferencedFileID = ["PT000000", "SE\x00\x12UI"]


def _delete_records(ds) -> None:
    del ds.DirectoryRecordSequence


def _record_without_offsets(ds) -> None:
    del ds.DirectoryRecordSequence[-1][0x00041400]


# (reader, seed name, file, mutation, command, expected exit code, what stderr must say)
CRASHES = {
    "dicom unknown VR (NotImplementedError)": (
        "dicom-file", "mr", "slice.dcm",
        lambda d: d.replace(b"\x08\x00\x05\x00CS", b"\x08\x00\x05\x00CQ", 1),
        "info", 1, "unknown value representation|Unknown Value Representation",
    ),
    "dicom empty pixel data (TypeError)": (
        "dicom-file", "mr", "slice.dcm", lambda d: _dicom(d, _set(PixelData=b"")),
        "info", 1, "truncated",
    ),
    "dicom 10^10 frames (memory)": (
        "dicom-file", "mr", "slice.dcm", lambda d: _dicom(d, _set(NumberOfFrames="1e10")),
        "info", 1, "pixel data is truncated or its header is wrong",
    ),
    "dicom unknown transfer syntax (ValueError in anonymize)": (
        "dicom-file", "mr", "slice.dcm",
        lambda d: d.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.3.4.5.6.7.8.9.10", 1),
        "anonymize", 1, "unknown transfer syntax",
    ),
    "dicom without SOP Instance UID (AttributeError in anonymize)": (
        "dicom-file", "mr", "slice.dcm",
        lambda d: _dicom(d, _set(SOPInstanceUID=None, MediaStorageSOPInstanceUID="")),
        "anonymize", 1, "no SOP Instance UID",
    ),
    "dicom zero orientation (ValueError from the geometry)": (
        "dicom-file", "mr", "slice.dcm",
        lambda d: _dicom(d, _set(ImageOrientationPatient=[0, 0, 0, 0, 0, 0])),
        "info", 1, "not two perpendicular directions",
    ),
    "dicom deflated data cut up (zlib.error)": (
        "dicom-file", "mr", "slice.dcm",
        lambda d: _corrupt(_dicom(d, _deflated), 3000, 200),
        "info", 1, "corrupt or truncated DICOM file",
    ),
    "dicom with a Command Set element (ValueError at save in anonymize)": (
        "dicom-file", "mr", "slice.dcm", lambda d: _with_command_element(d),
        "anonymize", 0, "",
    ),
    "dicomdir without records (AttributeError)": (
        "dicomdir", None, "fs/DICOMDIR", lambda d: _dicom(d, _delete_records),
        "info", 1, "without its Directory Record Sequence",
    ),
    "dicomdir record without offsets (KeyError in anonymize)": (
        "dicomdir", None, "fs/DICOMDIR", lambda d: _dicom(d, _record_without_offsets),
        "anonymize", 1, "without its offsets",
    ),
    "dicomdir file ID with a null byte (ValueError in anonymize)": (
        "dicomdir", None, "fs/DICOMDIR", lambda d: _dicom(d, _null_in_file_id),
        "anonymize", 1, "not a valid file ID",
    ),
    "medlens npz modality beyond unicode (SystemError)": (
        "npz", None, "image.npz",
        lambda d: _npz_without(d, "modality", _npy_unicode_beyond_range()),
        "info", 1, "invalid medlens .npz image",
    ),
    "npy shape 2^31 x 2^31 (MemoryError)": (
        "npy", None, "cube.npy",
        lambda d: _npy_header(d, "(28, 28, 28)", "(2147483648, 2147483648)"),
        "info", 1, "declares shape",
    ),
    "npy header cut short (TokenError)": (
        "npy", None, "cube.npy", lambda d: _npy_header(d, "), }", ""),
        "info", 1, "unreadable .npy header",
    ),
    "npy of booleans (TypeError in the summary)": (
        "npy", None, "cube.npy", lambda d: _npy_header(d, "'|u1'", "'|b1'"),
        "info", 0, "",
    ),
    "npy of text (TypeError in the summary)": (
        "npy", None, "cube.npy", lambda d: _npy_header(d, "'|u1'", "'|S1'"),
        "info", 1, "not an image",
    ),
    "medlens npz without its direction (KeyError)": (
        "npz", None, "image.npz", lambda d: _npz_without(d, "direction"),
        "info", 1, "without direction",
    ),
    "bmp of 2^31 columns (DecompressionBombError)": (
        "bmp", None, "cells.bmp", lambda d: d[:18] + struct.pack("<i", 2**31 - 1) + d[22:],
        "info", 1, "corrupt or unreadable image",
    ),
    "tiff cut after its tags (tifffile's log lines)": (
        "tiff", "rgb", "rgb.tif", lambda d: d[:221], "info", 1, "corrupt or truncated",
    ),
    "nifti quaternion b = 2 (ValueError)": (
        "nifti", None, "image.nii", lambda d: _nifti_field(d, 256, "f", 2.0),
        "info", 1, "invalid NIfTI orientation",
    ),
    "nifti-gz voxel offset 0 (nibabel's log lines)": (
        "nifti-gz", "hippocampus", "image.nii.gz", lambda d: _nifti_field(d, 108, "f", 0.0),
        "info", 1, "not a readable NIfTI file",
    ),
    "nifti voxel offset NaN (ValueError in anonymize)": (
        "nifti", None, "image.nii", lambda d: _nifti_field(d, 108, "f", float("nan")),
        "anonymize", 1, "voxel offset nan",
    ),
    "nifti-gz corrupt deflate data (zlib.error in anonymize)": (
        "nifti-gz", "hippocampus", "image.nii.gz",
        lambda d: _corrupt(d, 4000, 100),
        "anonymize", 1, "corrupt or truncated data",
    ),
    "decathlon label map saved as 4D with one volume (IndexError in the fingerprint)": (
        "decathlon", None, "task/labelsTr/hippocampus_001.nii.gz",
        lambda d: _nifti_field(d, 40, "h", 5),
        "info", 0, "",
    ),
    "decathlon dataset.json nested 100000 deep (RecursionError)": (
        "decathlon", None, "task/dataset.json", lambda d: b"[" * 100000 + b"]" * 100000,
        "info", 1, "not valid JSON",
    ),
    "hc18 labels.csv not UTF-8 (UnicodeDecodeError)": (
        "hc18", None, "hc18/labels.csv", lambda d: d.replace(b"pixel", b"pix\xffl", 1),
        "info", 1, "not a readable CSV file",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CRASHES))
def test_crash_found_by_fuzzing_is_a_clean_failure(fuzzer, name):
    reader, seed_name, file, mutate, command, code, said = CRASHES[name]
    seed = _seed(fuzzer, reader, seed_name)
    files = dict(seed.files)
    files[file] = mutate(files[file])
    case = fuzzer.run(seed, files, mutations=[name])
    assert not case.problems, case.describe()
    run = _run(case.runs, command)
    assert run.code == code, case.describe()
    if said:
        shown = [line for line in run.err.splitlines() if line.startswith(("error:", "failed"))]
        assert shown and re.search(said, shown[0]), case.describe()


def test_warnings_of_other_libraries_stay_off_stderr(fuzzer):
    """pydicom warns about the invalid UIDs of its own bundled RT dose file: not on stderr."""
    seed = _seed(fuzzer, "dicom-multiframe", "rtdose")
    case = fuzzer.run(seed, dict(seed.files))
    assert not case.problems, case.describe()
    assert all("Warning" not in run.err for run in case.runs)


def test_medlens_warnings_are_one_line(fuzzer):
    """A series with a slice moved: medlens's own SliceSpacingWarning, as one line."""
    seed = _seed(fuzzer, "dicom-series")
    files = dict(seed.files)
    name = sorted(files)[-1]

    def move(ds) -> None:
        ds.ImagePositionPatient = [float(v) + 0.5 * (i == 0) for i, v in
                                   enumerate(ds.ImagePositionPatient)]  # fmt: skip

    files[name] = _dicom(files[name], move)
    case = fuzzer.run(seed, files)
    assert not case.problems, case.describe()
    info = _run(case.runs, "info")
    assert info.code == 0
    warned = [line for line in info.err.splitlines() if line.strip()]
    assert warned and all(line.startswith("warning: ") for line in warned), info.err
    assert json.dumps(warned)  # plain text
