"""What pydicom reads silently but cannot write back whole: checked before de-identifying.

A file cut short before its pixel data, a Transfer Syntax UID that is no transfer syntax, one
whose byte order contradicts the data, no SOP Instance UID to name the output by, Command Set
elements: pydicom reads all of these, and they failed later, in the writer, with its exception.
:func:`instance_problem` says why instead; :func:`written_syntax` is the transfer syntax to write
with when the file meta names none (the encoding pydicom found the data in, not a guess);
:func:`deidentify` names the file when a value the engine reads first turns out unparseable.
"""

from __future__ import annotations

import struct
from pathlib import Path

from medlens.errors import ImageReadError

__all__ = ["deidentify", "drop_command_set", "instance_problem", "written_syntax"]


def deidentify(deid, ds, path: Path):
    """``deid.dataset(ds)``, with the errors pydicom raises while it parses a value the engine
    reads for the first time (values are parsed lazily) as an ImageReadError naming the file.
    Only pydicom's parsing errors: a ValueError or TypeError of the engine's own stays a bug."""
    from pydicom.errors import BytesLengthException

    try:
        return deid.dataset(ds)
    except (BytesLengthException, NotImplementedError, OSError, EOFError, struct.error,
            UnicodeDecodeError) as exc:  # fmt: skip
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ImageReadError(f"corrupt DICOM file ({text})", path) from None


def instance_problem(ds) -> str | None:
    """Why ``ds`` cannot be written back whole (None: nothing found)."""
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None) or {}
    if not (ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID")):
        return "not a DICOM instance (no SOP Instance UID in the dataset or file meta)"
    syntax = meta.get("TransferSyntaxUID")
    if syntax is not None:
        syntax = UID(str(syntax))
        if not syntax.is_transfer_syntax:
            return f"unknown transfer syntax {str(syntax)[:64]!r}"
        little = getattr(ds, "original_encoding", (None, None))[1]
        if little is not None and not syntax.is_compressed and syntax.is_little_endian != little:
            return f"transfer syntax {syntax.name or syntax} does not match the data's byte order"
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        from medlens.io._dicom_frames import _no_pixels

        reason = _no_pixels(ds)  # an image's class without pixel data: cut short
        return reason if reason.startswith("truncated") else None
    return None


def written_syntax(ds):
    """The file meta's Transfer Syntax UID, else the encoding pydicom read the data set in."""
    from pydicom.uid import (
        UID,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None:
        return UID(str(syntax))
    implicit, little = getattr(ds, "original_encoding", (ds.is_implicit_VR, True))
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian


def drop_command_set(ds) -> bool:
    """Remove Command Set elements (0000,eeee) from ``ds`` (damage: pydicom will not write
    them into a file); whether there were any."""
    commands = [tag for tag in list(ds.keys()) if tag >> 16 == 0]  # keys: nothing converted
    for tag in commands:
        del ds[tag]
    return bool(commands)


def valid_uid(value) -> bool:
    """A UID: digits and dots, 64 characters at most (damage can make it hold other bytes)."""
    from medlens._atomic import safe_uid

    return value is not None and safe_uid(str(value)) == str(value).strip().rstrip("\0")
