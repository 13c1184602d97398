"""De-identify a DICOMDIR: its directory records, with their byte offsets rewritten.

A DICOMDIR's records hold the same identifying attributes as the instances (patient name and
ID, study dates, instance UIDs) and point at each other by byte offset. Replacing values
changes the records' lengths, so the offsets are recomputed: the records are de-identified with
the patient of the PATIENT record above them (so pseudonyms, date shifts and UIDs match the
instances), written once to learn where each record now starts, and written again with the new
offsets (same length, since offsets are fixed-size).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from pydicom.errors import BytesLengthException

from medlens._atomic import atomic_path
from medlens.deid.engine import Deidentifier, Outcome, _Context, patient_key

_FILE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

__all__ = ["anonymize_dicomdir"]

_FIRST = 0x00041200
_LAST = 0x00041202
_NEXT = 0x00041400
_LOWER = 0x00041420
# File-set ID, descriptor file ID and its character set, the root offsets, consistency flag,
# the records, and the Specific Character Set
_FILE_SET = {0x00041130, 0x00041141, 0x00041142, _FIRST, _LAST, 0x00041212, 0x00041220,
             0x00080005}  # fmt: skip


def anonymize_dicomdir(deid: Deidentifier, path: Path, out: Path, *, root: Path | None = None):
    """Write the de-identified DICOMDIR ``path`` to ``out``; returns audit entries and counts.

    A record whose Referenced File ID leads outside the DICOMDIR's folder is refused (that file
    was not de-identified, and the output must not point at it): nothing is written.
    """
    from medlens.errors import ImageReadError
    from medlens.io._dicom_checks import convert_values
    from medlens.io._dicom_frames import read_dataset

    ds = read_dataset(path)  # damage pydicom meets is an ImageReadError naming the file
    convert_values(ds, path)  # the records' values too
    problem = _not_a_dicomdir(ds)
    if problem is not None:
        raise ImageReadError(f"not a valid DICOMDIR ({problem}): DICOMDIR not written", path)
    records = list(ds.DirectoryRecordSequence)
    for n, record in enumerate(records):
        problem = _outside_reference(record, path.parent)
        if problem is not None:
            raise ImageReadError(f"record {n} {problem}: DICOMDIR not written", path)
    try:  # the offsets are the file's numbers: parsed here, where damage can be named
        index = {int(record.seq_item_tell): n for n, record in enumerate(records)}
        first = index.get(int(ds[_FIRST].value or 0))
        links = [
            (index.get(int(r[_NEXT].value or 0)), index.get(int(r[_LOWER].value or 0)))
            for r in records
        ]
    except (ValueError, TypeError, OverflowError, BytesLengthException) as exc:
        text = " ".join(str(exc).split())[:200]
        raise ImageReadError(f"corrupt DICOMDIR record offsets ({text})", path) from None
    patients = _patients(records, links, first)
    outcome = Outcome()
    for n, record in enumerate(records):
        key = patients[n]
        context = _Context(None, deid.pseudonym(key), deid.shift_days(key), outcome)
        deid.clean(record, context, "DirectoryRecordSequence", f"(0004,1220)[{n}]")
    for tag in list(ds.keys()):  # top level: only the file-set's own attributes are kept
        if int(tag) not in _FILE_SET:  # (private, command or damaged elements hold anything)
            del ds[tag]
    if "FileSetID" in ds:
        ds.FileSetID = "ANONYMIZED"
    from medlens.deid.run import _new_meta

    ds.SOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
    ds.SOPInstanceUID = deid.uid(str(ds.file_meta.MediaStorageSOPInstanceUID))
    _new_meta(ds, deid)
    del ds.SOPClassUID, ds.SOPInstanceUID
    _write(ds, records, links, first, out, root)
    return [(e.path, e.keyword, e.action) for e in outcome.entries], outcome.counts


def _not_a_dicomdir(ds) -> str | None:
    """What a DICOMDIR lacks that rewriting it needs (None: nothing)."""
    from pydicom.uid import UID

    if "DirectoryRecordSequence" not in ds:
        return "no Directory Record Sequence"
    if _FIRST not in ds or _LAST not in ds:
        return "no offsets of the root directory's first and last records"
    meta = getattr(ds, "file_meta", None) or {}
    if not meta.get("MediaStorageSOPInstanceUID"):
        return "no Media Storage SOP Instance UID"
    syntax = meta.get("TransferSyntaxUID")
    if syntax is not None and not UID(str(syntax)).is_transfer_syntax:
        return f"unknown transfer syntax {str(syntax)[:64]!r}"
    for n, record in enumerate(ds.DirectoryRecordSequence):
        if _NEXT not in record or _LOWER not in record:
            return f"record {n} without its offsets to the next and lower records"
    return None


def _outside_reference(record, folder: Path) -> str | None:
    """Why ``record``'s Referenced File ID leads outside ``folder`` (None: it stays inside)."""
    value = record.get("ReferencedFileID")
    if value is None or value == "":
        return None
    parts = [str(value)] if isinstance(value, str) else [str(v) for v in value]
    shown = "\\".join(parts)
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\\" in part or ":" in part:
            return f"references {shown!r}, outside the file-set folder"
        if not _FILE_ID.fullmatch(part):  # PS3.10 8.2: letters, digits and underscore
            return f"references {shown[:80]!r}, not a valid file ID"
    target = folder.joinpath(*parts).resolve()
    base = folder.resolve()
    if base not in target.parents:
        return f"references {shown!r}, outside the file-set folder (through a link)"
    return None


def _patients(records, links, first) -> list[str]:
    """The patient key of each record: its PATIENT ancestor's (or its own)."""
    keys = ["" for _ in records]
    seen: set[int] = set()

    def visit(start: int | None, patient: str) -> None:
        node = start
        while node is not None and node not in seen:
            seen.add(node)
            record = records[node]
            own = patient
            if str(record.get("DirectoryRecordType", "")).strip() == "PATIENT":
                own = patient_key(record)
            keys[node] = own
            visit(links[node][1], own)
            node = links[node][0]

    visit(first if first is not None else (0 if records else None), "")
    for n in range(len(records)):  # records no chain reaches keep the empty patient
        if n not in seen:
            keys[n] = patient_key(records[n])
    return keys


def _write(ds, records, links, first, out: Path, root: Path | None) -> None:
    import pydicom

    def encode() -> bytes:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    for record in records:  # placeholders, then the real offsets (same encoded length)
        record[_NEXT].value = 0
        record[_LOWER].value = 0
    ds[_FIRST].value = 0
    ds[_LAST].value = 0
    ds.DirectoryRecordSequence = records
    draft = pydicom.dcmread(io.BytesIO(encode()))
    offsets = [int(item.seq_item_tell) for item in draft.DirectoryRecordSequence]
    for record, (next_index, lower_index) in zip(records, links, strict=True):
        record[_NEXT].value = 0 if next_index is None else offsets[next_index]
        record[_LOWER].value = 0 if lower_index is None else offsets[lower_index]
    if first is not None:
        ds[_FIRST].value = offsets[first]
        last = first
        while links[last][0] is not None:
            last = links[last][0]
        ds[_LAST].value = offsets[last]
    data = encode()
    with atomic_path(out, suffix="", root=root) as tmp:
        tmp.write_bytes(data)
