"""Plant findable markers in DICOM datasets, to prove a de-identification leaves nothing behind.

Validate a pipeline on your own data the way medlens's tests and benchmark do: copy real
files, give every attribute of Table E.1-1 a distinct marker value (also inside sequences, in a
sequence the table does not list, in private attributes and in overlays), de-identify, then
search the output files' raw bytes with :func:`find_leaks`. Every marker shares a searchable
form: text contains :data:`TEXT_MARK`, UIDs start with :data:`UID_ROOT`, dates are days of
days of 1901 (a date shift moves dates back a year or more, so a shifted marker never lands on
another marker), times end in ``.0042nn``.

Numeric and binary attributes (US, DS, OB, ...) cannot hold a searchable marker and are left
alone; so are attributes the chosen profile keeps on purpose.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from medlens.deid.profile import Profile, table_e11

__all__ = ["TEXT_MARK", "UID_ROOT", "find_leaks", "plant_markers"]

TEXT_MARK = "MRKQ"
UID_ROOT = "1.2.826.0.1.3680043.10.1051."
_TEXT_VRS = {"LO": 64, "SH": 16, "ST": 80, "LT": 80, "UT": 80, "UC": 64, "PN": 64, "CS": 16,
             "AE": 16, "UR": 64}  # fmt: skip
_INSTANCE = {"SOPInstanceUID", "MediaStorageSOPInstanceUID"}
_CANDIDATE = re.compile(  # cheap pre-filter; an exact search follows where it hits
    re.escape(TEXT_MARK.encode()) + b"|" + re.escape(UID_ROOT.encode()) + rb"|1901\d{4}|\.0042\d\d"
)
_UNLISTED_SEQUENCE = "AnatomicRegionSequence"  # not in Table E.1-1: kept, and cleaned inside


def plant_markers(ds, instance: int = 0, profile: Profile | None = None) -> dict[str, str]:
    """Give every plantable attribute of Table E.1-1 a marker value in ``ds`` (in place).

    Args:
        instance: a number distinguishing the files of one series (instance UIDs differ per
            file; study, series and frame of reference UIDs stay shared, as in real series).
        profile: attributes this profile keeps (K) are left alone.

    Returns:
        marker -> where it was planted, e.g. ``"(0008,0080) InstitutionName"``.
    """
    from pydicom.datadict import dictionary_VR, keyword_for_tag
    from pydicom.dataset import Dataset

    rules = (profile or Profile()).rules()
    planted: dict[str, str] = {}
    counter = iter(range(1, 1_000_000))
    dates, times = iter(range(1, 365)), iter(range(100))  # all dates within 1901
    seen: set[int] = set()  # a few attributes appear twice in the table

    def marker(vr: str, where: str) -> str | None:
        n = next(counter)
        if vr in ("DA", "DT"):
            day = next(dates)
            value = (dt.date(1901, 1, 1) + dt.timedelta(days=day)).strftime("%Y%m%d")
            value += "120000" if vr == "DT" else ""
        elif vr == "TM":
            k = next(times)
            value = f"{k % 24:02d}{k % 60:02d}00.0042{k:02d}"
        elif vr == "UI":
            value = f"{UID_ROOT}{n}"
        elif vr in _TEXT_VRS:
            value = f"{TEXT_MARK}{n:05d}"
            value = value.upper() if vr in ("CS", "AE") else value
        else:
            return None
        planted[value] = where
        return value

    def fill(item, names: list[int], where: str) -> None:
        for tag in names:
            vr = dictionary_VR(tag)
            keyword = keyword_for_tag(tag)
            value = marker(vr, f"{where}({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}")
            if value is not None:
                item.add_new(tag, vr, value)

    # inside each sequence: PatientName, InstitutionName, ReferencedSOPInstanceUID, StudyDate,
    # StudyDescription
    nested = [0x00100010, 0x00080080, 0x00081155, 0x00080020, 0x00081030]
    for row in table_e11():
        text = row["tag"]
        if "x" in text.lower() or "gggg" in text:
            continue
        tag = int(text[1:5] + text[6:10], 16)
        if tag >> 16 in (0x0000, 0x0002) or rules.action(tag) == "K" or tag in seen:
            continue
        seen.add(tag)
        vr = dictionary_VR(tag)
        if vr == "TM" and rules.action(tag) == "SHIFT":
            continue  # whole-day date shifts keep the times of day
        keyword = keyword_for_tag(tag)
        where = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}"
        if vr == "SQ":
            item = Dataset()
            fill(item, nested, f"{where}[0]")
            ds.add_new(tag, "SQ", [item])
        elif keyword in _INSTANCE:
            value = f"{UID_ROOT}9.{instance}"
            planted[value] = where
            ds.add_new(tag, vr, value)
        elif "or" not in vr:
            value = marker(vr, where)
            if value is not None:
                ds.add_new(tag, vr, value)
    # a sequence Table E.1-1 does not list: kept, its items cleaned
    item = Dataset()
    fill(item, nested, f"{_UNLISTED_SEQUENCE}[0]")
    setattr(ds, _UNLISTED_SEQUENCE, [item])
    # private attributes, a private sequence, and an overlay's comments
    block = ds.private_block(0x0011, f"{TEXT_MARK} CREATOR", create=True)
    planted[f"{TEXT_MARK} CREATOR"] = "(0011,0010) private creator"
    block.add_new(0x01, "LO", marker("LO", "(0011,1001) private"))
    inner = Dataset()
    fill(inner, nested, "(0011,1002)[0]")
    block.add_new(0x02, "SQ", [inner])
    ds.add_new(0x60004000, "LT", marker("LT", "(6000,4000) OverlayComments"))
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", f"{UID_ROOT}9.{instance}")
        meta.SourceApplicationEntityTitle = marker("AE", "(0002,0016) SourceApplicationEntityTitle")
    return planted


def find_leaks(markers: dict[str, str], files) -> dict[str, list[str]]:
    """Markers found in the raw bytes of ``files``: marker -> files holding it."""
    found: dict[str, list[str]] = {}
    encoded = {marker: marker.encode("ascii") for marker in markers}
    for path in files:
        data = Path(path).read_bytes()
        if not _CANDIDATE.search(data):  # one regex pass; exact search only where it hits
            continue
        for marker, raw in encoded.items():
            if raw in data:
                found.setdefault(marker, []).append(str(path))
    return found
