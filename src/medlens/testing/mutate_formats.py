"""Structured mutators for the fuzz harness: DICOM, NIfTI, PNG, NumPy, TIFF and BMP.

Each parses the (trusted, real) seed, changes one field the way a broken or hostile file would
(a UID that climbs out of a folder, a header that claims 2^31 rows, NaN where spacing goes) and
writes it back, so the damage reaches past the first parser check. The generic byte, text, XML
and JSON mutators are in :mod:`medlens.testing.mutate`.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import random
import re
import struct
import zipfile
import zlib
from collections.abc import Callable

from medlens.testing.mutate import INTS, TRAVERSALS, _bytes, _json

__all__ = ["STRUCTURED", "lenient_pydicom"]

# --------------------------------------------------------------------------------- DICOM
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
NUMERIC = {  # keyword -> values (as they would be written in a broken file)
    "Rows": (0, 1, 3, 65535),
    "Columns": (0, 1, 3, 65535),
    "BitsAllocated": (0, 1, 7, 12, 64),
    "BitsStored": (0, 17, 33),
    "HighBit": (0, 40),
    "SamplesPerPixel": (0, 2, 3, 65535),
    "PixelRepresentation": (2, 65535),
    "NumberOfFrames": ("0", "-1", "2147483647", "1e10", "abc"),
    "PixelSpacing": ("nan\\nan", "0\\0", "-1\\1", "1e309\\1", "1"),
    "ImageOrientationPatient": ("0\\0\\0\\0\\0\\0", "nan\\0\\0\\0\\1\\0", "1\\0\\0\\1\\0\\0", "1"),
    "ImagePositionPatient": ("nan\\0\\0", "1e308\\1e308\\1e308", "0"),
    "SliceThickness": ("nan", "-0", "1e309"),
    "SpacingBetweenSlices": ("nan", "0", "-5"),
    "RescaleSlope": ("nan", "inf", "0", "1e308", "-1e308"),
    "RescaleIntercept": ("nan", "1e308"),
    "InstanceNumber": ("nan", "-2147483649", "x"),
    "WindowCenter": ("nan", "a\\b"),
    "PhotometricInterpretation": ("RGB", "PALETTE COLOR", "YBR_FULL_422", "", "MONOCHROME3"),
    "PlanarConfiguration": (1, 7),
    "AcquisitionTime": ("99", "ab", "250000.999"),
    "TriggerTime": ("nan", "-1e308"),
}
SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.80",
    "1.2.3.4",
    "",
)


@contextlib.contextmanager
def lenient_pydicom():
    """pydicom without value validation, so broken values can be written."""
    from pydicom import config

    before = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = before


def _dicom(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    import pydicom

    with lenient_pydicom():
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        patches: list[tuple[int, bytes]] = []
        what = _dicom_change(ds, rng, patches)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
        out = buffer.getvalue()
        for tag, value in patches:
            out = _patch_value(out, tag, value)
    return out, what


def _patch_value(data: bytes, tag: int, value: bytes) -> bytes:
    """``data`` with the value of its top-level element ``tag`` replaced by ``value`` (bytes
    pydicom refuses to write, such as ``IS`` "abc"), the element's length field updated."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    raw = ds.get_item(tag)
    start, length = int(raw.value_tell), int(raw.length)
    value += b" " * (len(value) % 2)
    size = 4 if raw.is_implicit_VR else 2
    code = ("<" if raw.is_little_endian else ">") + ("I" if size == 4 else "H")
    header = bytearray(data[:start])
    struct.pack_into(code, header, start - size, len(value))
    return bytes(header) + value + data[start + length :]


def _dicom_change(ds, rng: random.Random, patches: list[tuple[int, bytes]]) -> str:
    from pydicom.dataset import Dataset

    records = ds.get("DirectoryRecordSequence")
    choice = rng.randrange(9 if records else 8)
    if choice == 8:  # a DICOMDIR: its records
        record = rng.choice(list(records))
        which = rng.randrange(3)
        if which == 0:
            value = rng.choice(
                (
                    ["..", "outside", "IM_OUT"],
                    "../outside/IM_OUT",
                    "/etc/passwd",
                    ["PT000000", "..", "..", "ESCAPED"],
                    "IM\\..\\..\\X",
                    "",
                )
            )
            record.ReferencedFileID = value
            return f"ReferencedFileID={value!r}"
        if which == 1:
            tag = rng.choice((0x00041400, 0x00041420, 0x00041200, 0x00041202))
            holder = record if tag in (0x00041400, 0x00041420) else ds
            if tag in holder:
                holder[tag].value = rng.choice((0, 1, 7, 0xFFFFFFFF, int(holder[tag].value) + 2))
            return f"offset ({tag >> 16:04X},{tag & 0xFFFF:04X})"
        record.DirectoryRecordType = rng.choice(("", "PATIENT", "ROOT", "X" * 20))
        return "DirectoryRecordType"
    if choice == 0:
        keyword = rng.choice((*UID_KEYWORDS, "PatientName", "PatientID", "SeriesDescription"))
        value = rng.choice(TRAVERSALS)
        setattr(ds, keyword, value)
        if keyword == "SOPInstanceUID" and getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = value
        return f"{keyword}={value!r}"[:60]
    if choice in (1, 2):
        keyword = rng.choice(sorted(NUMERIC))
        value = rng.choice(NUMERIC[keyword])
        try:
            setattr(ds, keyword, value)
        except (ValueError, TypeError, OverflowError):  # not a valid IS/DS: written as bytes
            if keyword not in ds:
                setattr(ds, keyword, "1")
            patches.append((ds[keyword].tag, str(value).encode("latin-1")))
        return f"{keyword}={value!r}"
    if choice == 3:
        keyword = rng.choice(
            (
                "Rows",
                "Columns",
                "PixelData",
                "SOPClassUID",
                "BitsAllocated",
                "SeriesInstanceUID",
                "ImagePositionPatient",
                "file_meta",
            )
        )
        if keyword == "file_meta":
            ds.file_meta = pydicom_meta()
        elif keyword in ds:
            delattr(ds, keyword)
        return f"delete {keyword}"
    if choice == 4 and getattr(ds, "file_meta", None) is not None:
        syntax = rng.choice(SYNTAXES)
        ds.file_meta.TransferSyntaxUID = syntax
        return f"TransferSyntaxUID={syntax!r}"
    if choice == 5 and "PixelData" in ds:
        raw = bytes(ds.PixelData)
        cut = rng.choice((0, 1, len(raw) // 2, len(raw) - 1, len(raw) * 3))
        ds.PixelData = (raw * 4)[:cut]
        return f"PixelData[:{cut}]"
    if choice == 6 and "PixelData" in ds:  # float pixel data with NaN
        import numpy as np

        count = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1)
        values = np.linspace(0, 1, count, dtype=np.float32)
        values[rng.sample(range(count), k=min(count, 5))] = rng.choice((np.nan, np.inf))
        del ds.PixelData
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
        ds.FloatPixelData = values.tobytes()
        return "FloatPixelData with NaN"
    if choice == 7:
        item, depth = Dataset(), rng.choice((2, 30, 200))
        for _ in range(depth):
            outer = Dataset()
            outer.ReferencedImageSequence = [item]
            item = outer
        ds.ReferencedImageSequence = item.ReferencedImageSequence
        return f"nested sequences x{depth}"
    keyword = rng.choice(("PatientName", "StudyDescription", "InstitutionName"))
    setattr(ds, keyword, "x" * rng.choice((65, 1000, 70000)))
    return f"long {keyword}"


def pydicom_meta():
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    return meta


def _dicom_length(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A wrong value length in an explicit-VR element header (found by its VR bytes)."""
    spots = [
        m.start()
        for m in re.finditer(
            rb"(?<=[\x00-\x7f][\x00-\x7f]{3})(?:DS|IS|UI|PN|LO|SH|"
            rb"CS|DA|TM|US|UL|FD|FL)",
            data[132:],
        )
    ]
    if not spots:
        raise ValueError("no explicit VR element")
    at = 132 + rng.choice(spots) + 2
    length = int.from_bytes(data[at : at + 2], "little")
    new = rng.choice((0, 1, length + 1, max(0, length - 1), 0xFFFF, 0xFFFE))
    return data[:at] + new.to_bytes(2, "little") + data[at + 2 :], f"length {length}->{new}"


# --------------------------------------------------------------------------------- NIfTI
NIFTI_FIELDS = {  # name -> (offset, struct code, values)
    "dim0": (40, "h", (0, -1, 5, 7, 8, 32767)),
    "dim1": (42, "h", (0, -1, 32767, 1)),
    "dim3": (46, "h", (0, -5, 32767)),
    "dim4": (48, "h", (0, 2, 32767)),
    "datatype": (70, "h", (0, 1, 128, 255, 1536, 1792, 2304, 32767, -1)),
    "bitpix": (72, "h", (0, 1, 7, 128)),
    "pixdim1": (80, "f", (float("nan"), 0.0, -1.0, 1e38)),
    "pixdim4": (92, "f", (float("nan"), float("inf"))),
    "vox_offset": (108, "f", (0.0, -1.0, 100.0, 351.0, 1e10, float("nan"), 3.4e38, 353.5)),
    "scl_slope": (112, "f", (float("nan"), float("inf"), 0.0, 1e38)),
    "scl_inter": (116, "f", (float("nan"), -1e38)),
    "xyzt_units": (123, "B", (0, 255, 24)),
    "qform_code": (252, "h", (0, 1, 99, -1)),
    "sform_code": (254, "h", (0, 1, 99)),
    "quatern_b": (256, "f", (float("nan"), 2.0, 1e30)),
    "srow_x0": (280, "f", (float("nan"), 0.0)),
    "srow_y1": (300, "f", (float("inf"), 0.0)),
    "sizeof_hdr": (0, "i", (0, 347, 540, 1 << 24)),
    "magic": (344, "4s", (b"n+2\0", b"ni1\0", b"\0\0\0\0", b"n+1x")),
    "extension": (348, "4s", (b"\x01\0\0\0", b"\0\0\0\0")),
    "esize": (352, "i", (0, 8, -16, 1 << 30, 17)),
}


def _nifti(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    packed = data[:2] == b"\x1f\x8b"
    raw = bytearray(gzip.decompress(data) if packed else data)
    choice = rng.randrange(4)
    if choice < 3:
        name = rng.choice(sorted(NIFTI_FIELDS))
        offset, code, values = NIFTI_FIELDS[name]
        value = rng.choice(values)
        struct.pack_into("<" + code, raw, offset, value)
        what = f"{name}={value!r}"
    else:  # non-finite voxels in float data
        offset = int(struct.unpack_from("<f", raw, 108)[0])
        if struct.unpack_from("<h", raw, 70)[0] != 16:
            raise ValueError("not float32 voxels")
        for _ in range(5):
            at = offset + 4 * rng.randrange((len(raw) - offset) // 4)
            struct.pack_into("<f", raw, at, rng.choice((float("nan"), float("inf"))))
        what = "nan voxels"
    out = bytes(raw)
    return (gzip.compress(out, compresslevel=1, mtime=0) if packed else out), what


# --------------------------------------------------------------------------------- PNG
def _png(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    chunks = _png_chunks(data)
    choice = rng.randrange(4)
    names = [c[0] for c in chunks]
    if choice == 0:
        body = bytearray(chunks[0][1])
        field = rng.choice(
            (
                (0, ">I", (0, 1, 0x7FFFFFFF, 100000)),
                (4, ">I", (0, 0x7FFFFFFF, 3)),
                (8, ">B", (0, 3, 32)),
                (9, ">B", (1, 5, 7)),
                (12, ">B", (2,)),
            )
        )
        value = rng.choice(field[2])
        struct.pack_into(field[1], body, field[0], value)
        chunks[0] = (b"IHDR", bytes(body))
        what = f"IHDR@{field[0]}={value}"
    elif choice == 1 and b"tEXt" in names:
        i = names.index(b"tEXt")
        key, _, text = chunks[i][1].partition(b"\0")
        try:
            value, what = _json(text, rng)
        except ValueError:
            value, what = b"{", "broken"
        chunks[i] = (b"tEXt", key + b"\0" + value)
        what = f"geometry {what}"
    elif choice == 2:
        del chunks[rng.randrange(len(chunks))]
        what = "drop chunk"
    else:
        i = rng.randrange(len(chunks))
        chunks.insert(i, (rng.choice((b"IHDR", b"IDAT", b"tEXt", b"zTXt", b"iCCP")), b"\0" * 13))
        what = "insert chunk"
    return b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(n, b) for n, b in chunks), what


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 8
    while at + 8 <= len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        chunks.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + size]))
        at += 12 + size
    return chunks


def _png_chunk(name: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(name + body).to_bytes(4, "big")
    return len(body).to_bytes(4, "big") + name + body + crc


# --------------------------------------------------------------------------------- NumPy
def _npy(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    end = data.index(b"\n") + 1
    header = data[:end].decode("latin-1")
    choice = rng.randrange(3)
    if choice == 0:
        shape = rng.choice(
            (
                "(2147483648, 2147483648)",
                "(-1, 5)",
                "()",
                "(0,)",
                "(1, 1, 1, 1, 1, 1)",
                "(4294967296,)",
                "(3,)",
            )
        )
        new = re.sub(r"'shape': \([^)]*\)", f"'shape': {shape}", header)
        what = f"shape={shape}"
    elif choice == 1:
        descr = rng.choice(("'|O'", "'<U10'", "'V8'", "'>f8'", "'x'", "'<c16'", "'?'", "'<M8[s]'"))
        new = re.sub(r"'descr': '[^']*'", f"'descr': {descr}", header)
        what = f"descr={descr}"
    else:
        new = header.replace("False", "True") if "False" in header else header.replace("True", "1")
        what = "fortran_order"
    body = new.rstrip("\n")
    pad = (64 - (len(body) + 1) % 64) % 64 if data[6] == 1 else 0
    out = (body + " " * pad + "\n").encode("latin-1")
    if data[6] == 1:
        out = out[:8] + (len(out) - 10).to_bytes(2, "little") + out[10:]
    return out + data[end:], what


def _npz(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    name = rng.choice(sorted(members))
    choice = rng.randrange(3)
    if choice == 0:
        members[name], what = _npy(members[name], rng)
        what = f"{name}: {what}"
    elif choice == 1:
        new = rng.choice(("../../x/ESCAPED.npy", "train_images.npy", "array.npy", "", "a\0.npy"))
        members[new] = members.pop(name)
        what = f"rename {name}->{new!r}"
    else:
        members[name], what = _bytes(members[name], rng, [])
        what = f"{name}: {what}"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for key, value in members.items():
            archive.writestr(key, value)
    return buffer.getvalue(), what


# --------------------------------------------------------------------------------- TIFF / BMP
def _tiff(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    count = struct.unpack_from(order + "H", data, ifd)[0]
    entry = ifd + 2 + 12 * rng.randrange(count)
    buf = bytearray(data)
    tag = struct.unpack_from(order + "H", buf, entry)[0]
    if rng.random() < 0.5:
        value = rng.choice(INTS)
        struct.pack_into(order + "I", buf, entry + 8, value)
        return bytes(buf), f"tag {tag} value={value:#x}"
    value = rng.choice(INTS)
    struct.pack_into(order + "I", buf, entry + 4, value)
    return bytes(buf), f"tag {tag} count={value:#x}"


def _bmp(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    buf = bytearray(data)
    offset, code = rng.choice(
        ((10, "<I"), (18, "<i"), (22, "<i"), (28, "<H"), (30, "<I"), (14, "<I"), (46, "<I"))
    )
    value = rng.choice(INTS)
    value = value - (1 << 32) if code == "<i" and value >= 1 << 31 else value
    struct.pack_into(
        code, buf, offset, value & (0xFFFF if code == "<H" else -1 if code == "<i" else 0xFFFFFFFF)
    )
    return bytes(buf), f"header@{offset}={value:#x}"


#: family -> structured mutators (the generic ones for text formats are in ``mutate``)
STRUCTURED: dict[str, list[Callable[[bytes, random.Random], tuple[bytes, str]]]] = {
    "dicom": [_dicom, _dicom, _dicom, _dicom_length],
    "nifti": [_nifti],
    "png": [_png],
    "tiff": [_tiff],
    "bmp": [_bmp],
    "npy": [_npy],
    "npz": [_npz],
}
