"""De-identify a NIfTI file: its free-text header fields and header extensions.

NIfTI has no patient attributes, but converters leave identifying text behind: the description
(``descrip``, often the series description, sometimes a name or date), ``aux_file``,
``intent_name`` and the ANALYZE leftovers ``data_type`` and ``db_name``; and header extensions
(dcm2niix and others can embed the whole DICOM header there). The text fields are cleared and
every extension is dropped; the rest of the header and the voxel bytes are copied unchanged.
"""

from __future__ import annotations

import gzip
import math
import shutil
import struct
import zlib
from pathlib import Path

from medlens._atomic import atomic_path
from medlens.errors import ImageReadError

__all__ = ["anonymize_nifti"]

# (offset, length, name) of the text fields, for NIfTI-1 (348-byte header) and NIfTI-2 (540)
_TEXT = {
    348: [(4, 10, "data_type"), (14, 18, "db_name"), (148, 80, "descrip"),
          (228, 24, "aux_file"), (328, 16, "intent_name")],
    540: [(240, 80, "descrip"), (320, 24, "aux_file"), (508, 16, "intent_name")],
}  # fmt: skip
_MAX_VOX_OFFSET = 1 << 30  # header extensions larger than this are damage
_MAGIC = {348: (344, {b"n+1\0": True, b"ni1\0": False}), 540: (4, {b"n+2\0": True})}


def anonymize_nifti(
    path: Path, out: Path, *, root: Path | None = None
) -> list[tuple[str, str, str]]:
    """Write ``path`` without identifying header text to ``out``; returns the audit entries."""
    compressed = path.name.lower().endswith(".gz")
    opener = gzip.open if compressed else open
    entries: list[tuple[str, str, str]] = []
    with opener(path, "rb") as stream:
        source = _Checked(stream, path)  # corrupt gzip data: an error naming the input
        head = source.read(540)
        size, order = _size(head, path)
        header = bytearray(head[:size])
        leftover = head[size:]
        single = _MAGIC[size][1].get(bytes(header[_MAGIC[size][0] : _MAGIC[size][0] + 4]), False)
        if not single:
            raise ImageReadError("two-file NIfTI (.hdr/.img) is not supported here", path)
        for offset, length, name in _TEXT[size]:
            if any(header[offset : offset + length]):
                header[offset : offset + length] = bytes(length)
                entries.append((f"header:{name}", name, "emptied"))
        vox_offset = _vox_offset(header, size, order, path)
        rest = leftover + source.read(max(0, vox_offset - len(head)))
        if len(rest) < vox_offset - size:
            raise ImageReadError("truncated NIfTI file (it ends before its voxel data)", path)
        extensions = rest[: vox_offset - size]
        if len(extensions) >= 4 and extensions[0] != 0:
            entries.append(("header:extensions", "extensions", "removed"))
        new_offset = size + 4
        _set_vox_offset(header, size, order, new_offset)
        suffix = ".nii.gz" if compressed else ".nii"
        with atomic_path(out, suffix=suffix, root=root) as tmp, _sink(tmp, compressed) as sink:
            sink.write(bytes(header) + b"\0\0\0\0")
            sink.write(rest[vox_offset - size :])
            shutil.copyfileobj(source, sink, 1 << 20)
    return entries


def _sink(path: Path, compressed: bool):
    return gzip.open(path, "wb", compresslevel=6) if compressed else open(path, "wb")


def _size(head: bytes, path: Path) -> tuple[int, str]:
    for order in ("<", ">"):
        if len(head) >= 4 and struct.unpack(order + "i", head[:4])[0] in (348, 540):
            size = struct.unpack(order + "i", head[:4])[0]
            if len(head) >= size:
                return size, order
    raise ImageReadError("not a NIfTI file (bad header size)", path)


def _vox_offset(header: bytearray, size: int, order: str, path: Path) -> int:
    """Where the voxels start: after the header and its 4 extension bytes, before 1 GiB."""
    code = "f" if size == 348 else "q"
    value = struct.unpack_from(order + code, header, 108 if size == 348 else 168)[0]
    if not (math.isfinite(value) and size + 4 <= value <= _MAX_VOX_OFFSET):
        raise ImageReadError(
            f"voxel offset {value!r} is not past the {size + 4}-byte header (corrupt NIfTI)", path
        )
    return int(value)


class _Checked:
    """A readable stream whose read errors (corrupt or truncated gzip data) name the input."""

    def __init__(self, stream, path: Path) -> None:
        self._stream, self._path = stream, path

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except (OSError, EOFError, zlib.error) as exc:
            text = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise ImageReadError(f"corrupt or truncated data ({text})", self._path) from None


def _set_vox_offset(header: bytearray, size: int, order: str, value: int) -> None:
    if size == 348:
        struct.pack_into(order + "f", header, 108, float(value))
    else:
        struct.pack_into(order + "q", header, 168, value)
