"""One uploaded image, received into a private folder and checked before anything decodes it.

A request's body is streamed to disk (never held whole in memory) and counted: past the limit
the upload stops with :class:`UploadError` 413, whatever ``Content-Length`` claimed. Before a
reader sees the file, :func:`check_upload` refuses what would make a reader allocate far more
than was sent (decompression bombs): a PNG/JPEG/TIFF/BMP with more pixels than allowed, a
gzip (``.nii.gz``) or zip (a DICOM series, ``.npz``) that inflates past the limit or holds
unsafe names, a DICOM whose pixel data is longer or shorter than its header says, an ``.npy``
whose header promises more than the file holds. Nothing is unpickled (``.npy`` with
``allow_pickle=False``; no other format can hold a pickle).
"""

from __future__ import annotations

import gzip
import re
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Limits", "UploadError", "check_upload", "receive_upload", "receive_uploads"]

_CHUNK = 1 << 20


class UploadError(Exception):
    """A request the server refuses: HTTP ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """``max_bytes``: the upload; ``max_pixels``: pixels (voxels x channels) of one image;
    ``max_inflated``: bytes a compressed upload (gzip, zip) may decompress to."""

    max_bytes: int = 512 << 20
    max_pixels: int = 256 << 20
    max_inflated: int = 2 << 30
    max_files: int = 5000  # files in a zipped DICOM series


def safe_name(name: str | None) -> str:
    """The uploaded file's own name (its last path component) as a safe file name."""
    from medlens._atomic import safe_name as safe

    return safe(re.split(r"[\\/]", name or "")[-1], max_length=128, default="upload")


async def receive_upload(
    stream: AsyncIterator[bytes],
    content_type: str,
    folder: Path,
    limits: Limits,
    filename: str | None = None,
) -> Path:
    """Write the request body into ``folder``: the file part of a ``multipart/form-data`` body
    (the part with a file name, or the one named ``file``), or a raw body named ``filename``."""
    counted = _Counted(stream, limits.max_bytes)
    if content_type.lower().startswith("multipart/form-data"):
        return (await _multipart(counted, content_type, folder, None))["file"]
    target = folder / safe_name(filename)
    with target.open("wb") as handle:
        async for chunk in counted:
            handle.write(chunk)
    if target.stat().st_size == 0:
        raise UploadError(400, "empty body: send one image (multipart field 'file', or the body)")
    return target


async def receive_uploads(
    stream: AsyncIterator[bytes],
    content_type: str,
    folder: Path,
    limits: Limits,
    fields: tuple[str, ...],
) -> dict[str, Path]:
    """Write the file parts named ``fields`` of a ``multipart/form-data`` body, each into its
    own subfolder of ``folder`` (``FIELD/NAME``); returns them by field. A body without
    one of them, or not multipart, is refused (400) naming the fields."""
    wanted = " and ".join(repr(f) for f in fields)
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadError(400, f"send the images as the multipart fields {wanted}")
    return await _multipart(_Counted(stream, limits.max_bytes), content_type, folder, fields)


class _Counted:
    def __init__(self, stream: AsyncIterator[bytes], limit: int) -> None:
        self.stream, self.limit, self.seen = stream, limit, 0

    async def __aiter__(self):
        async for chunk in self.stream:
            self.seen += len(chunk)
            if self.seen > self.limit:
                raise UploadError(413, f"upload over the limit of {self.limit >> 20} MB")
            yield chunk


async def _multipart(
    stream: _Counted, content_type: str, folder: Path, fields: tuple[str, ...] | None
) -> dict[str, Path]:
    """The file parts: ``fields`` by name, or (None) the first part with a file name or named
    ``file``, as ``{"file": path}``."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "malformed multipart body: no boundary in Content-Type")
    state: dict = {"header": b"", "value": b"", "headers": {}, "file": None, "done": {}}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["header"].lower()] = state["value"]
        state["header"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        disposition = state["headers"].get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        name = options.get(b"filename")
        field = options.get(b"name", b"").decode("utf-8", "replace")
        if fields is None:
            take = not state["done"] and (name is not None or field == "file")
            field, where = "file", folder
        else:
            take = field in fields and field not in state["done"]
            where = folder / field
        if take:
            decoded = None if name is None else name.decode("utf-8", "replace")
            where.mkdir(exist_ok=True)
            state["field"], state["path"] = field, where / safe_name(decoded)
            state["file"] = state["path"].open("wb")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["file"] is not None:
            state["file"].write(data[start:end])

    def on_part_end() -> None:
        if state["file"] is not None:
            state["file"].close()
            state["file"] = None
            state["done"][state["field"]] = state["path"]
        state["headers"] = {}

    callbacks = {
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    finally:
        if state["file"] is not None:
            state["file"].close()
    if fields is None and not state["done"]:
        raise UploadError(400, "malformed multipart body: no file part (send it as field 'file')")
    missing = [f for f in fields or () if f not in state["done"]]
    if missing:
        wanted = " and ".join(repr(f) for f in fields or ())
        raise UploadError(400, f"no file part {missing[0]!r}: send the images as the multipart "
                          f"fields {wanted}")  # fmt: skip
    return state["done"]


def check_upload(path: Path, limits: Limits) -> Path:
    """Refuse ``path`` (:class:`UploadError` 400) where reading it would allocate far more than
    was sent; a zip is unpacked (safely) into a folder beside it. Returns what to read."""
    with path.open("rb") as handle:
        head = handle.read(512)
    name = path.name.lower()
    if head[:2] == b"\x1f\x8b":
        _check_gzip(path, limits)
    elif head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        if name.endswith(".npz"):
            _zip_members(path, limits)
            return path
        return _unzip(path, limits)
    elif head[:6] == b"\x93NUMPY":
        _check_npy(path, limits)
    elif head[128:132] == b"DICM":
        _check_dicom(path, limits)
    elif head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or head[:2] == b"BM":
        _check_raster(path, limits)
    elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        _check_tiff(path, limits)
    return path


def _too_many(what: str, count: int, limits: Limits) -> UploadError:
    return UploadError(
        400,
        f"{what}: {count:,} pixels, over the limit of {limits.max_pixels:,} "
        "(a decompression bomb or not an image this server takes)",
    )


def _check_raster(path: Path, limits: Limits) -> None:
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as image:  # reads the header only
            count = image.width * image.height * len(image.getbands())
    except PILImage.DecompressionBombError as exc:
        raise UploadError(400, f"{path.name}: {exc} (a decompression bomb)") from None
    except (OSError, ValueError) as exc:
        raise UploadError(400, f"{path.name}: not a readable image ({exc})") from None
    if count > limits.max_pixels:
        raise _too_many(path.name, count, limits)


def _check_tiff(path: Path, limits: Limits) -> None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            count = sum(int(page.size) for page in tif.pages)  # headers only
    except Exception as exc:  # tifffile raises many kinds on a corrupt file
        raise UploadError(400, f"{path.name}: not a readable TIFF ({exc})") from None
    if count > limits.max_pixels:
        raise _too_many(path.name, count, limits)


def _check_gzip(path: Path, limits: Limits) -> None:
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if total > limits.max_inflated:
                    raise UploadError(
                        400,
                        f"{path.name}: decompresses past {limits.max_inflated >> 20} MB "
                        "(a decompression bomb)",
                    )
    except (OSError, EOFError) as exc:
        raise UploadError(400, f"{path.name}: not a complete gzip file ({exc})") from None


def _zip_members(path: Path, limits: Limits) -> list[zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
    except zipfile.BadZipFile as exc:
        raise UploadError(400, f"{path.name}: not a readable zip ({exc})") from None
    if len(members) > limits.max_files:
        raise UploadError(400, f"{path.name}: {len(members)} files, over {limits.max_files}")
    if sum(m.file_size for m in members) > limits.max_inflated:
        raise UploadError(
            400, f"{path.name}: unpacks past {limits.max_inflated >> 20} MB (a decompression bomb)"
        )
    return members


def _unzip(path: Path, limits: Limits) -> Path:
    """A zipped DICOM series (or image files) unpacked into ``<upload>.d``: names reduced to
    safe ones (no absolute paths, no ``..``), sizes counted while inflating, not trusted."""
    members = _zip_members(path, limits)
    folder = path.with_name(path.name + ".d")
    folder.mkdir()
    total = 0
    with zipfile.ZipFile(path) as archive:
        for i, member in enumerate(members):
            target = folder / f"{i:05d}_{safe_name(member.filename)}"
            with archive.open(member) as source, target.open("wb") as out:
                while chunk := source.read(_CHUNK):
                    total += len(chunk)
                    if total > limits.max_inflated:
                        raise UploadError(400, f"{path.name}: unpacks past the limit")
                    out.write(chunk)
            _check_dicom(target, limits) if _is_dicom(target) else None
    return folder


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def _check_dicom(path: Path, limits: Limits) -> None:
    """Pixel data larger or smaller than Rows x Columns x frames x samples x bits says (for
    uncompressed data), or a header promising more pixels than allowed."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, defer_size=1024)
        if "PixelData" not in ds:
            return
        element = ds.get_item("PixelData")
        rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
        syntax = ds.file_meta.get("TransferSyntaxUID")
        length = getattr(element, "length", None)  # deferred: a raw element
        if length is None:
            length = len(element.value or b"")
        tell = getattr(element, "value_tell", None)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UploadError(400, f"{path.name}: not a readable DICOM file ({exc})") from None
    count = rows * cols * frames * samples
    if count > limits.max_pixels:
        raise _too_many(path.name, count, limits)
    if tell is not None and length != 0xFFFFFFFF and tell + length > path.stat().st_size:
        raise UploadError(400, f"{path.name}: truncated DICOM: the file ends inside its pixel data")
    if syntax is not None and syntax.is_compressed:
        return  # decoders write into the array the header sizes; they cannot overrun it
    expected = (count * bits + 7) // 8
    if length in (expected, expected + 1):
        return
    if length == 0xFFFFFFFF or length > expected + 1:
        raise UploadError(
            400,
            f"{path.name}: pixel data of {length:,} bytes, larger than its "
            f"header says ({expected:,})",
        )
    raise UploadError(
        400,
        f"{path.name}: truncated DICOM: pixel data of {length:,} bytes where "
        f"its header says {expected:,}",
    )


def _check_npy(path: Path, limits: Limits) -> None:
    import numpy as np

    try:
        with path.open("rb") as handle:
            major, _ = np.lib.format.read_magic(handle)
            read = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(handle)
            offset = handle.tell()
    except (ValueError, OSError) as exc:
        raise UploadError(400, f"{path.name}: not a readable .npy ({exc})") from None
    if dtype.hasobject:
        raise UploadError(400, f"{path.name}: an object array (pickles are never loaded)")
    count = int(np.prod(shape, dtype=np.int64))
    if count > limits.max_pixels:
        raise _too_many(path.name, count, limits)
    if path.stat().st_size - offset < count * dtype.itemsize:
        raise UploadError(400, f"{path.name}: truncated .npy (its header says {shape})")
