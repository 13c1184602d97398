"""Which planted markers a (mutated) input still holds in identifying places.

A mutation can move a marker out of an identifying attribute: a splice copies its bytes into the
pixel data, a flipped bit turns (0010,0010) Patient's Name into an attribute nobody must remove.
A de-identifier is right to keep those, so the leak check only expects the markers that the
input, as mutated, still holds where :func:`medlens.deid.markers.plant_markers` planted them
(for DICOM: in an element with a tag it planted, a private element, or the file meta; for
NIfTI: in a header text field or an extension before the voxels), and nowhere else.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import struct
import warnings

__all__ = ["expected_markers", "marker_places"]

_FORM = re.compile(
    rb"MRKQ(?:\d{5}| CREATOR)|1\.2\.826\.0\.1\.3680043\.10\.1051\.[0-9.]*[0-9]|1901\d{4}(?:120000)?"
    rb"|\d{6}\.0042\d\d"
)
_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)")
_ALWAYS = {0x00041511}  # Referenced SOP Instance UID in File (a DICOMDIR record's copy)
_NIFTI_TEXT = {
    348: [(4, 10), (14, 18), (148, 80), (228, 24), (328, 16)],
    540: [(240, 80), (320, 24), (508, 16)],
}


def expected_markers(files: dict[str, bytes], planted: dict[str, str]) -> dict[str, str]:
    """The markers of ``planted`` that the input ``files`` (name -> bytes) hold in identifying
    places and nowhere else (a marker a mutation copied into pixel data may be kept)."""
    identifying: set[str] = set()
    elsewhere: set[str] = set()
    for name, data in files.items():
        found, other = marker_places(name, data, planted)
        identifying |= found
        elsewhere |= other
    return {marker: planted[marker] for marker in identifying - elsewhere if marker in planted}


def marker_places(name: str, data: bytes, planted: dict[str, str]) -> tuple[set[str], set[str]]:
    """Markers in ``data`` (the file ``name``): (in identifying places, anywhere else)."""
    if not planted:
        return set(), set()
    if name.lower().endswith((".nii", ".nii.gz")):
        return _nifti(data)
    return _dicom(data, planted)


def _markers(raw: bytes) -> set[str]:
    return {m.group().decode("ascii") for m in _FORM.finditer(raw)}


def _dicom(data: bytes, planted: dict[str, str]) -> set[str]:
    import pydicom

    from medlens.testing.mutate_formats import lenient_pydicom

    tags = set(_ALWAYS)
    for where in planted.values():
        found = _TAG.findall(where)
        if found:
            tags.add(int(found[-1][0] + found[-1][1], 16))
    identifying: set[str] = set()
    elsewhere: set[str] = set()
    try:
        with lenient_pydicom(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            meta = getattr(ds, "file_meta", None)
            if meta is not None:
                _walk(meta, tags, identifying, elsewhere, always=True)
            _walk(ds, tags, identifying, elsewhere)
    except Exception:
        return set(), set()
    return identifying, elsewhere


def _walk(ds, tags: set[int], identifying: set, elsewhere: set, *, always: bool = False) -> None:
    for tag in list(ds.keys()):
        try:
            raw = ds.get_item(tag)
            vr = getattr(raw, "VR", None)
            if vr in ("SQ", None, "UN") or not isinstance(getattr(raw, "value", None), bytes):
                element = ds[tag]
                if element.VR == "SQ":
                    for item in element.value or []:
                        _walk(item, tags, identifying, elsewhere, always=always)
                    continue
                value = element.value
            else:
                value = raw.value
        except Exception:
            value = getattr(ds.get_item(tag), "value", b"")
        raw_bytes = value if isinstance(value, bytes) else str(value).encode("latin-1", "replace")
        found = _markers(raw_bytes)
        if not found:
            continue
        if always or tag in tags or tag.is_private:
            identifying |= found
        else:
            elsewhere |= found


def _nifti(data: bytes) -> tuple[set[str], set[str]]:
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except Exception:
            return set(), set()
    size = next(
        (s for order in "<>" for s in (348, 540) if data[:4] == struct.pack(order + "i", s)), None
    )
    if size is None or len(data) < size:
        return set(), set()
    order = "<" if data[:4] == struct.pack("<i", size) else ">"
    identifying: set[str] = set()
    for offset, length in _NIFTI_TEXT[size]:
        identifying |= _markers(data[offset : offset + length])
    vox = struct.unpack_from(
        order + ("f" if size == 348 else "q"), data, 108 if size == 348 else 168
    )[0]
    end = int(vox) if math.isfinite(vox) and size + 4 <= vox <= len(data) else len(data)
    identifying |= _markers(data[size:end])  # extensions (the whole file if vox_offset is bad)
    return identifying, _markers(data[end:])
