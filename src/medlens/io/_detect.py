"""Choose a reader by a file's content (magic bytes), not by its name alone."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

from medlens.errors import ImageReadError

__all__ = ["sniff", "sniff_annotation"]

_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}


def sniff(path: Path) -> str:
    """Return the format of ``path``: dicom, nifti, png, jpeg, tiff, bmp, npy, npz, video (or the
    annotation formats voc and contour, which are not images).

    Raises:
        ImageReadError: missing, empty, or of no format medlens reads.
    """
    if not path.exists():
        raise ImageReadError("no such file or folder", path)
    if path.is_dir():
        return "dicom-folder"
    try:
        with open(path, "rb") as handle:
            head = handle.read(1024)
    except OSError as exc:
        raise ImageReadError(f"cannot be read ({exc.strerror})", path) from None
    if not head:
        raise ImageReadError("file is empty", path)
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide") or head.startswith(b"\x1aE\xdf\xa3"):
        return "video"  # MP4/MOV (ISO base media), Matroska/WebM
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "video"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "npz"
    if head.startswith(b"\x1f\x8b"):
        try:
            inner = zlib.decompressobj(wbits=31).decompress(head, 600)
        except zlib.error:
            inner = b""
        if _is_nifti(inner):
            return "nifti"
        raise ImageReadError("gzip file does not hold a NIfTI image (or is corrupt)", path)
    if _is_nifti(head):
        return "nifti"
    annotation = sniff_annotation(path, head)
    if annotation is not None:
        return annotation
    if path.suffix.lower() in _DICOM_SUFFIXES or path.name.upper() == "DICOMDIR":
        return "dicom"  # a DICOM file without the 128-byte preamble; pydicom decides
    if looks_like_raw_dicom(head):
        return "dicom"
    raise ImageReadError("not a recognised medical image format", path)


def sniff_annotation(path: Path, head: bytes) -> str | None:
    """``voc`` for a Pascal VOC XML annotation, ``contour`` for an ``x y`` per line text file."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<"):
        if b"<annotation" in text:
            return "voc"
        if text.startswith((b"<?xml", b"<!")):  # a long prolog or DTD: look further in
            try:
                with open(path, "rb") as handle:
                    more = handle.read(1 << 16)
            except OSError:
                return None
            return "voc" if b"<annotation" in more else None
        return None
    first = text.split(b"\n", 1)[0]
    if b"\0" not in text and _CONTOUR_LINE.match(first):
        return "contour"
    return None


_CONTOUR_LINE = re.compile(
    rb"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[ \t,;]+[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
    rb"\s*$"
)


def _is_nifti(head: bytes) -> bool:
    if len(head) < 348:
        return False
    size_le = int.from_bytes(head[:4], "little")
    size_be = int.from_bytes(head[:4], "big")
    if 348 in (size_le, size_be) and head[344:347] in (b"n+1", b"ni1"):
        return True
    return 540 in (size_le, size_be) and head[4:7] in (b"n+2", b"ni2")


def looks_like_raw_dicom(head: bytes) -> bool:
    """A preamble-less DICOM stream starts with a low element of group 0002 or 0008 (LE)."""
    return (
        len(head) >= 8
        and head[:2] in (b"\x02\x00", b"\x08\x00")
        and int.from_bytes(head[2:4], "little") < 0x100
    )
