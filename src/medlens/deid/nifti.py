"""De-identify a NIfTI file: its free-text header fields and header extensions.

NIfTI has no patient attributes, but converters leave identifying text behind: the description
(``descrip``, often the series description, sometimes a name or date), ``aux_file``,
``intent_name`` and the ANALYZE leftovers ``data_type`` and ``db_name``; and header extensions
(dcm2niix and others can embed the whole DICOM header there). The text fields are cleared and
every extension is dropped; the rest of the header and the voxel bytes are copied unchanged.
"""

from __future__ import annotations

import gzip
import shutil
import struct
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
_MAGIC = {348: (344, {b"n+1\0": True, b"ni1\0": False}), 540: (4, {b"n+2\0": True})}


def anonymize_nifti(
    path: Path, out: Path, *, root: Path | None = None
) -> list[tuple[str, str, str]]:
    """Write ``path`` without identifying header text to ``out``; returns the audit entries."""
    compressed = path.name.lower().endswith(".gz")
    opener = gzip.open if compressed else open
    entries: list[tuple[str, str, str]] = []
    with opener(path, "rb") as source:
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
        vox_offset = _vox_offset(header, size, order)
        rest = leftover + source.read(max(0, vox_offset - len(head)))
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


def _vox_offset(header: bytearray, size: int, order: str) -> int:
    if size == 348:
        return int(struct.unpack_from(order + "f", header, 108)[0])
    return int(struct.unpack_from(order + "q", header, 168)[0])


def _set_vox_offset(header: bytearray, size: int, order: str, value: int) -> None:
    if size == 348:
        struct.pack_into(order + "f", header, 108, float(value))
    else:
        struct.pack_into(order + "q", header, 168, value)
