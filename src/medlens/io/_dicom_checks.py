"""Checks on a parsed DICOM dataset before medlens uses it: what pydicom leaves for later.

pydicom parses lazily: an element's value is converted on first access, so an unknown value
representation or a broken sequence raised wherever the element was first touched, far from the
file it came from. :func:`check_elements` finds those right after the read, where the file can be
named; :func:`frame_layout` checks Number of Frames, Rows, Columns and bits against the pixel data
before anything is made per frame or allocated.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from medlens.errors import ImageReadError

__all__ = ["PARSE_ERRORS", "READ_KEYWORDS", "check_elements", "convert_values", "frame_layout"]

#: What pydicom raises while it parses damaged bytes (OSError: "No tag to read at ...", from a
#: sequence's bytes; zlib.error: a deflated transfer syntax's stream).
PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, NotImplementedError,
                OverflowError, EOFError, OSError, struct.error, zlib.error, UnicodeError,
                LookupError, RecursionError)  # fmt: skip
_MAX_INFLATION = 1100  # no codec here shrinks images more than deflate's ~1032x in practice
_MAX_DEPTH = 32  # sequences nested deeper than this are damage, not data
_FIXED = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "AT": 4, "SV": 8, "UV": 8,
          "OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}  # fmt: skip


def check_elements(ds, path: Path, depth: int = 0) -> None:
    """Parse now what pydicom leaves for first access, so a broken file is named here and not
    by whatever touches the element later: every element's value representation must be known
    (pydicom raises NotImplementedError on access otherwise), sequences must parse into items,
    at most ``_MAX_DEPTH`` deep, binary values must be whole numbers of values, and an element
    an explicit-VR file left without a VR (damage pydicom reads past) is converted now, or it
    could not be written back. Values are not converted here (that costs more than the read):
    :func:`convert_values` converts those a reader uses."""
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import RawDataElement
    from pydicom.errors import BytesLengthException

    if depth > _MAX_DEPTH:
        raise ImageReadError(f"corrupt DICOM file (sequences nested over {_MAX_DEPTH} deep)", path)
    known = _known_vrs()
    for tag, element in list(ds._dict.items()):  # raw elements, unconverted
        vr = element.VR
        if isinstance(element, RawDataElement):
            if vr is not None and vr not in known:
                raise ImageReadError(
                    f"corrupt DICOM file (element {_tag(tag)} has the unknown value "
                    f"representation {_shown_vr(vr)})",
                    path,
                )
            if vr is None and not element.is_implicit_VR:
                vr = "convert"  # no VR in an explicit-VR file: pydicom could not write it back
            elif vr is None:  # implicit VR: the dictionary's, or a sequence of undefined length
                try:
                    vr = "SQ" if element.length == 0xFFFFFFFF else dictionary_VR(tag)
                except KeyError:
                    vr = "UN"
            size = _FIXED.get(vr)
            if size and element.length % size and element.length != 0xFFFFFFFF:
                raise ImageReadError(
                    f"corrupt DICOM file (element {_tag(tag)}: {element.length} bytes are no "
                    f"whole number of {vr} values)",
                    path,
                )
        if vr not in ("SQ", "convert"):
            continue
        try:
            converted = ds[tag]
        except (BytesLengthException, *PARSE_ERRORS) as exc:
            raise ImageReadError(
                f"corrupt DICOM file (element {_tag(tag)}: {_short(exc)})", path
            ) from None
        if converted.VR != "SQ":
            continue
        for item in converted.value or ():
            if hasattr(item, "_dict"):
                check_elements(item, path, depth + 1)


#: The attributes medlens's readers use (converted on reading: a damaged one is named then);
#: the functional group sequences are converted whole.
READ_KEYWORDS = (
    "Rows", "Columns", "SamplesPerPixel", "NumberOfFrames", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "InstanceNumber", "ImageOrientationPatient", "ImagePositionPatient",
    "PixelSpacing", "ImagerPixelSpacing", "SpacingBetweenSlices", "SliceThickness",
    "RescaleSlope", "RescaleIntercept", "AcquisitionTime", "ContentTime", "TriggerTime",
    "TemporalPositionIdentifier", "AcquisitionNumber", "RepetitionTime", "FrameTime",
    "WindowCenter", "WindowWidth", "Modality", "SeriesInstanceUID", "StudyInstanceUID",
    "SOPInstanceUID", "SOPClassUID", "SeriesDescription", "PhotometricInterpretation",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
)  # fmt: skip


def convert_values(ds, path: Path, keywords: tuple[str, ...] | None = None) -> None:
    """Convert the values of ``keywords`` (all elements when None, nested too) now, so that a
    damaged one (a number string that is no number, a length no whole number of values) is
    named here and not wherever it is first used."""
    from pydicom.errors import BytesLengthException

    errors = (BytesLengthException, *PARSE_ERRORS)
    if keywords is None:
        try:
            for _ in ds.iterall():
                pass
        except errors as exc:
            raise ImageReadError(f"corrupt DICOM file ({_short(exc)})", path) from None
        return
    for keyword in keywords:
        try:
            element = ds.get(keyword)
            if keyword.endswith("FunctionalGroupsSequence") and element is not None:
                for item in element:
                    for _ in item.iterall():
                        pass
        except errors as exc:
            raise ImageReadError(f"corrupt DICOM file ({keyword}: {_short(exc)})", path) from None


def _known_vrs() -> frozenset[str]:
    global _KNOWN_VRS
    if _KNOWN_VRS is None:
        from pydicom.valuerep import VR

        _KNOWN_VRS = frozenset(str(v.value) for v in VR)
    return _KNOWN_VRS


_KNOWN_VRS: frozenset[str] | None = None


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _shown_vr(vr) -> str:
    return repr(vr) if isinstance(vr, str) and vr.isprintable() else repr(str(vr).encode())


def frame_layout(ds, rows: int, columns: int, native: bool, path: Path) -> tuple[int, int]:
    """Samples per pixel and Number of Frames, checked against the pixel data they describe
    before anything is made per frame or allocated (a damaged header can claim 10^10 frames or
    65535 x 65535 pixels over a few kilobytes)."""
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except (TypeError, ValueError, OverflowError):
        raise ImageReadError(
            "invalid Samples per Pixel, Number of Frames or Bits Allocated", path
        ) from None
    if rows < 1 or columns < 1 or samples < 1 or n_frames < 1 or bits < 1:
        raise ImageReadError(
            f"image of {rows}x{columns} pixels, {samples} samples, {n_frames} frames, "
            f"{bits} bits: nothing to read",
            path,
        )
    data = ds.get("PixelData") or ds.get("FloatPixelData") or ds.get("DoubleFloatPixelData") or b""
    needed = (n_frames * rows * columns * samples * bits + 7) // 8
    compressed = not native and "PixelData" in ds and _encapsulated(data)
    limit = len(data) * _MAX_INFLATION + (64 << 20) if compressed else len(data)
    if (compressed or n_frames > 1) and needed > limit:
        raise ImageReadError(
            f"pixel data is truncated or its header is wrong ({len(data)} bytes for "
            f"{n_frames}x{rows}x{columns} pixels of {samples} x {bits} bits)",
            path,
        )
    return samples, n_frames


def _encapsulated(data: bytes) -> bool:
    """Whether pixel data is encapsulated (compressed): it starts with an item tag."""
    return bytes(data[:4]) == b"\xfe\xff\x00\xe0"


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
