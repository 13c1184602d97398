"""NIfTI-1/2 reading and writing with the affine honoured.

NIfTI stores voxels with the first index fastest (Fortran order) and maps ``(i, j, k)`` to RAS.
Reversing the axes of that array gives our ``(z, y, x)`` C-order layout as a *view*, so no voxel is
copied on the way in; the RAS affine is converted to LPS geometry.

Compressed files are inflated in one call straight into the buffer the voxels are then viewed
from (libdeflate, checked against the gzip trailer's length and CRC), which is several times
faster than streaming through :mod:`gzip` and copying into an array as nibabel does.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import zlib
from pathlib import Path

import numpy as np

from medlens._atomic import atomic_path
from medlens.errors import ImageReadError
from medlens.image import Image, Role
from medlens.io._checks import require_finite

__all__ = ["read_nifti", "write_nifti"]

_TIME_UNITS = {8: 1.0, 16: 1e-3, 24: 1e-6}  # NIfTI xyzt_units time codes -> seconds


def _decompress(raw: bytes, path: Path) -> np.ndarray:
    """Inflate a whole gzip file into one writable ``uint8`` buffer.

    The fast path inflates the single deflate stream straight into a buffer sized from the gzip
    trailer (libdeflate through imagecodecs: no regrowth, no second copy) and accepts the result
    only when its length and CRC match the trailer. Multi-member files, files of 4 GiB or more
    and anything unusual take the thorough standard-library path.
    """
    if len(raw) < 18 or raw[:3] != b"\x1f\x8b\x08":
        raise ImageReadError("corrupt gzip data (bad header)", path)
    size_hint = int.from_bytes(raw[-4:], "little")
    crc_hint = int.from_bytes(raw[-8:-4], "little")
    body = _deflate_body(raw)
    if body is not None and size_hint > 0:
        try:
            import imagecodecs

            buffer = np.empty(size_hint, dtype=np.uint8)
            out = imagecodecs.deflate_decode(body, raw=True, out=buffer)
            if len(out) == size_hint and _crc32(buffer) == crc_hint:
                return buffer
        except Exception:  # any trouble: the thorough path below decides
            pass
    try:  # multi-member or unusual gzip streams: the standard library reads them all
        return np.frombuffer(bytearray(gzip.decompress(raw)), dtype=np.uint8)
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageReadError(f"corrupt or truncated gzip data ({_one_line(exc)})", path) from None


def _deflate_body(raw: bytes) -> memoryview | None:
    """The deflate stream of a gzip member (RFC 1952 header fields skipped), or None."""
    flags = raw[3]
    offset = 10
    try:
        if flags & 0x04:  # FEXTRA
            offset += 2 + int.from_bytes(raw[offset : offset + 2], "little")
        if flags & 0x08:  # FNAME
            offset = raw.index(b"\0", offset) + 1
        if flags & 0x10:  # FCOMMENT
            offset = raw.index(b"\0", offset) + 1
        if flags & 0x02:  # FHCRC
            offset += 2
    except ValueError:
        return None
    return memoryview(raw)[offset:-8] if offset < len(raw) - 8 else None


def _crc32(buffer: np.ndarray) -> int:
    try:
        from isal import isal_zlib  # several times faster than zlib's CRC

        return isal_zlib.crc32(buffer)
    except ImportError:
        return zlib.crc32(buffer)


def _array_from_buffer(header, buffer: np.ndarray, path: Path) -> np.ndarray:
    """A zero-copy Fortran-order view of the voxels in ``buffer``, rescaled when the header says."""
    from nibabel.volumeutils import apply_read_scaling

    dtype = header.get_data_dtype()
    shape = header.get_data_shape()
    offset = int(header.get_data_offset())
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if buffer.size < needed:
        raise ImageReadError(
            f"truncated NIfTI file: {buffer.size} bytes of data for {needed} expected", path
        )
    array = np.ndarray(shape, dtype=dtype, buffer=buffer, offset=offset, order="F")
    slope, inter = header.get_slope_inter()
    if slope is None or (slope == 1.0 and (inter is None or inter == 0.0)):
        return array
    return apply_read_scaling(array, slope, inter)


def read_nifti(path: str | Path, *, role: Role | str = Role.INTENSITY) -> Image:
    """Read a ``.nii``, ``.nii.gz`` or ``.hdr``/``.img`` pair into an :class:`Image`."""
    import nibabel as nib

    path = Path(path)
    with _quiet_nibabel():
        try:
            with open(path, "rb") as handle:
                gzipped = handle.read(2) == b"\x1f\x8b"
            # By content, as load_image sniffs: nibabel chooses its reader by the file *name*, so a
            # gzipped NIfTI called ``scan.dat`` (or ``.nii.gz`` content without the suffix) failed.
            if gzipped or not path.name.lower().endswith((".nii", ".hdr", ".img")):
                raw = path.read_bytes()
                data = (
                    _decompress(raw, path) if gzipped else np.frombuffer(bytearray(raw), np.uint8)
                )
                klass = nib.Nifti2Image if _is_nifti2(data[:4].tobytes()) else nib.Nifti1Image
                header = klass.header_class.from_fileobj(_BytesReader(memoryview(data)))
                array = _array_from_buffer(header, data, path)
            else:
                nii = nib.load(str(path))
                header = nii.header
                array = np.asanyarray(nii.dataobj)
        except ImageReadError:
            raise
        except Exception as exc:  # nibabel raises many kinds for malformed headers and short files
            raise ImageReadError(f"not a readable NIfTI file ({_one_line(exc)})", path) from None

    if np.asarray(array).dtype.kind not in "biuf":  # RGB(A) records, complex: not medlens's
        code = int(header["datatype"])
        raise ImageReadError(f"NIfTI voxels of datatype {code} are not supported", path)
    array = require_finite(np.asarray(array), path)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    try:  # the qform quaternion and sform rows are the file's numbers: they can be impossible
        affine = _best_affine(header)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
        raise ImageReadError(f"invalid NIfTI orientation ({_one_line(exc)})", path) from None
    if array.ndim == 5 and array.shape[3] == 1:  # NIfTI vector images: (i, j, k, 1, c)
        array = array[:, :, :, 0, :]
    if array.ndim not in (2, 3, 4):
        raise ImageReadError(
            f"{array.ndim}D NIfTI data of shape {array.shape} is not supported", path
        )
    spatial = 2 if array.ndim == 2 else 3
    flipped = array.T  # Fortran (i, j, k[, t]) -> C-order ([t,] k, j, i), a view
    if not flipped.flags.writeable:
        flipped = flipped.copy()

    leading: tuple[str, ...] = ()
    meta: dict = {"path": str(path), "format": "nifti"}
    description = header["descrip"].tobytes().split(b"\0", 1)[0].decode("latin-1").strip()
    if description:
        meta["description"] = description
    if flipped.ndim - spatial == 1:
        code = int(header["xyzt_units"]) & 0x38
        if code in _TIME_UNITS:
            leading = ("time",)
            meta["time_step"] = float(header["pixdim"][4]) * _TIME_UNITS[code]
        else:
            leading = ("channel",)
    if spatial == 2:
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
        affine2 = np.eye(3)
        affine2[:2, :2] = lps[:2, :2]
        affine2[:2, 2] = lps[:2, 3]
        if abs(np.linalg.det(affine2[:2, :2])) < 1e-12:
            affine2[:2, :2] = np.diag(header.get_zooms()[:2])
        affine, ras = affine2, False
    else:
        ras = True
    try:  # the affine is the file's: Image refuses a singular or non-finite one
        return Image.from_affine(flipped, affine, ras=ras, role=role, leading=leading, meta=meta)
    except ValueError as exc:
        raise ImageReadError(f"invalid NIfTI geometry ({_one_line(exc)})", path) from None


def write_nifti(image: Image, path: str | Path) -> Path:
    """Write ``image`` as NIfTI-1 (``.nii`` or ``.nii.gz``) atomically, geometry preserved."""
    import nibabel as nib

    path = Path(path)
    array = _nifti_dtype(image.array)
    data = array.T  # ([lead,] z, y, x) -> (x, y, z[, lead]); nibabel writes Fortran order
    if image.spatial_dims == 2 and image.leading:
        # NIfTI's third axis is always z and the fourth time/channel: (x, y, t) would be read
        # (by anyone) as a volume, and a time step could not be stored. Write (x, y, 1, t).
        data = data[:, :, None]
    affine = image.ras_affine
    nii = nib.Nifti1Image(data, affine)
    header = nii.header
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    if image.leading == ("time",):
        header.set_xyzt_units("mm", "sec")
        zooms = list(header.get_zooms())
        zooms[3] = float(image.meta.get("time_step", 1.0))
        header.set_zooms(zooms)
    else:
        header.set_xyzt_units("mm")
    description = str(image.meta.get("description", ""))[:79]
    header["descrip"] = description.encode("latin-1", "replace")
    with atomic_path(path) as tmp:
        nib.save(nii, str(tmp))
    return path


def _nifti_dtype(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype in (np.int64, np.uint64) or array.dtype == np.uint32:
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for candidate in (np.uint8, np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return array.astype(candidate)
        return array.astype(np.float64)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def _best_affine(header) -> np.ndarray:
    """The affine NIfTI readers agree on: sform when set, else qform, else the pixdim fallback."""
    sform, scode = header.get_sform(coded=True)
    qform, qcode = header.get_qform(coded=True)
    if qcode and qcode > 0 and not (scode and scode > 0):
        return qform
    if scode and scode > 0:
        # ITK prefers the qform when the sform is not a pure rotation-and-scale; do the same so
        # both readers agree on the geometry of such files.
        linear = sform[:3, :3]
        zooms = np.linalg.norm(linear, axis=0)
        ortho = linear / zooms
        if qcode and qcode > 0 and not np.allclose(ortho.T @ ortho, np.eye(3), atol=1e-4):
            return qform
        return sform
    return header.get_base_affine()


@contextlib.contextmanager
def _quiet_nibabel():
    """nibabel logs the header problems it fixes (or raises on) through a handler of its own on
    stderr; the image read, or the one-line error, already says what matters."""
    from nibabel import imageglobals

    level = imageglobals.logger.level
    imageglobals.logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        imageglobals.logger.setLevel(level)


def _is_nifti2(data: bytes) -> bool:
    return len(data) >= 4 and int.from_bytes(data[:4], "little") in (540, 0x1C020000)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _BytesReader:
    """A minimal file object over bytes that hands out zero-copy views for array reads."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = (
            pos if whence == 0 else (self._pos + pos if whence == 1 else len(self._view) + pos)
        )
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._pos + size
        chunk = self._view[self._pos : end]
        self._pos += len(chunk)
        return bytes(chunk)

    def readinto(self, buffer) -> int:
        chunk = self._view[self._pos : self._pos + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)
