"""DICOM files into frames: one record per 2D frame with its geometry, rescale and time keys.

Single-frame files give one frame; enhanced multi-frame files give one per frame, with values from
the per-frame functional groups overriding the shared ones. Assembly into volumes happens in
:mod:`medlens.io._dicom_assemble`, the same way for both.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import ImageReadError
from medlens.io._dicom_checks import (
    PARSE_ERRORS,
    READ_KEYWORDS,
    check_elements,
    convert_values,
    frame_layout,
)
from medlens.io._dicom_display import modality_lut, palette_to_rgb, pixel_spacing
from medlens.io._dicom_values import integer as _int
from medlens.io._dicom_values import number as _float
from medlens.io._dicom_values import numbers as _floats
from medlens.io._dicom_values import seconds_of_datetime as _dicom_datetime
from medlens.io._dicom_values import seconds_of_day as _dicom_time

__all__ = ["Frame", "decode_many", "decode_pixels", "frames_from_dataset", "read_dataset"]

# Little-endian uncompressed transfer syntaxes whose pixel bytes can be viewed directly.
_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
# Compressed syntaxes that imagecodecs decodes without holding the GIL (so files decode in
# parallel); pydicom's own decoders remain the reference and the fallback.
_CODECS = {
    "1.2.840.10008.1.2.4.90": "jpeg2k", "1.2.840.10008.1.2.4.91": "jpeg2k",
    "1.2.840.10008.1.2.4.201": "jpeg2k", "1.2.840.10008.1.2.4.202": "jpeg2k",
    "1.2.840.10008.1.2.4.203": "jpeg2k", "1.2.840.10008.1.2.4.80": "jpegls",
    "1.2.840.10008.1.2.4.81": "jpegls", "1.2.840.10008.1.2.4.57": "ljpeg",
    "1.2.840.10008.1.2.4.70": "ljpeg",
}  # fmt: skip
_DTYPES = {(8, 0): np.uint8, (8, 1): np.int8, (16, 0): np.uint16, (16, 1): np.int16,
           (32, 0): np.uint32, (32, 1): np.int32}  # fmt: skip


@dataclass
class Frame:
    """One 2D frame of a DICOM file and what is needed to place it in a volume."""

    path: Path
    dataset: Any  # pydicom Dataset (kept for lazy pixel decoding)
    frame: int  # index in the file's pixel data (0 for single-frame files)
    rows: int
    columns: int
    samples: int
    row_cosine: np.ndarray | None
    column_cosine: np.ndarray | None
    position: np.ndarray | None
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) = (dy, dx)
    slice_spacing: float | None  # SpacingBetweenSlices or SliceThickness, for single slices
    slope: float
    intercept: float
    time_key: tuple = ()
    trigger_ms: float | None = None  # TriggerTime / cardiac trigger delay / cine frame offset
    acquisition_s: float | None = None  # acquisition time of day in seconds
    repetition_ms: float | None = None  # RepetitionTime (fMRI volume interval when nothing else)
    instance: int = 0
    sop_uid: str = ""
    extra: dict = field(default_factory=dict)


_WARNING_REGISTRY: dict = {}  # for pydicom warnings passed on by read_dataset


def read_dataset(path: Path, *, stop_before_pixels: bool = False):
    """Parse one DICOM file; a corrupt or truncated file raises a one-line error naming it."""
    # pydicom only *warns* when a file ends inside an undefined-length element (encapsulated
    # pixel data cut short) and drops that element, so a truncated compressed slice looked like
    # a non-image and was silently left out of its series. Make that an error naming the file.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _read_dataset(path, stop_before_pixels)
    for warning in caught:  # "End of file reached before delimiter ... in file <path>"
        text = str(warning.message)
        if text.startswith("End of file reached") and text.endswith(str(path)):
            raise ImageReadError("truncated DICOM file (it ends inside a data element)", path)
    meta = getattr(ds, "file_meta", None) or {}
    declared = meta.get("FileMetaInformationGroupLength")
    if declared is not None and ds.preamble is not None:  # 128-byte preamble, DICM, 12-byte length
        with contextlib.suppress(OSError, TypeError, ValueError):
            if path.stat().st_size < 144 + int(declared):
                raise ImageReadError(
                    "truncated DICOM file (it ends inside its file meta information)", path
                )
    for warning in caught:  # everything else is passed on unchanged
        warnings.warn_explicit(
            warning.message,
            warning.category,
            warning.filename,
            warning.lineno,
            registry=_WARNING_REGISTRY,
            source=warning.source,
        )
    return ds


def _read_dataset(path: Path, stop_before_pixels: bool):
    import pydicom
    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        try:  # files without the 128-byte preamble are legal in the wild
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        except Exception as exc:
            raise ImageReadError(f"not a valid DICOM file ({_short(exc)})", path) from None
        if (
            "SOPClassUID" not in ds
            and "PixelData" not in ds
            and "DirectoryRecordSequence" not in ds
        ):
            raise ImageReadError("not a valid DICOM file (no DICOM header found)", path) from None
    except (OSError, MemoryError, BytesLengthException, *PARSE_ERRORS) as exc:
        raise ImageReadError(f"corrupt or truncated DICOM file ({_short(exc)})", path) from None
    check_elements(ds, path)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        check_elements(meta, path)
    convert_values(ds, path, READ_KEYWORDS)
    return ds


def _no_pixels(ds) -> str:
    """Why a dataset without pixel data has none: cut short (an image class) or not an image."""
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None) or {}
    names = [
        UID(str(uid)).name
        for uid in (ds.get("SOPClassUID"), meta.get("MediaStorageSOPClassUID"))
        if uid
    ]  # fmt: skip  (the dataset's own may be cut short: the file meta's too)
    image = [n for n in names if "Image Storage" in n or "Segmentation" in n]
    if "Rows" in ds or "BitsAllocated" in ds or image:
        what = f"{image[0]} instance" if image else "image"
        return f"truncated DICOM file ({what} without its pixel data: the file ends early)"
    return f"DICOM file holds no pixel data (not an image{': ' + names[0] if names else ''})"


def frames_from_dataset(ds, path: Path) -> list[Frame]:
    """All frames of one dataset (an image file) with geometry, rescale and time keys."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(_no_pixels(ds), path)
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise ImageReadError("DICOM image without Rows/Columns", path) from None
    samples, n_frames = frame_layout(ds, rows, columns, _syntax(ds) in _NATIVE_LE, path)
    photometric = _photometric(ds)
    if photometric == "PALETTE COLOR":
        samples = 3  # decoded through the palette to RGB
    if photometric.endswith(("_422", "_420")) and columns % 2 and _syntax(ds) in _NATIVE_LE:
        raise ImageReadError(
            f"{photometric} image with an odd width ({columns} columns): its chroma pairs "
            "cannot be split",
            path,
        )
    try:
        base = _attributes(ds)
        shared = _functional_groups(ds.get("SharedFunctionalGroupsSequence"))
    except _BadAttribute as exc:
        raise ImageReadError(str(exc), path) from None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    frames = []
    for index in range(n_frames):
        values = dict(base)
        values.update(shared)
        if per_frame is not None and index < len(per_frame):
            try:
                values.update(_functional_groups([per_frame[index]]))
            except _BadAttribute as exc:
                raise ImageReadError(f"frame {index + 1}: {exc}", path) from None
        elif n_frames > 1:
            values.update(_legacy_multiframe(ds, index, values))
        orientation = values.get("orientation")
        position = values.get("position")
        frames.append(
            Frame(
                path=path,
                dataset=ds,
                frame=index,
                rows=rows,
                columns=columns,
                samples=samples,
                row_cosine=None if orientation is None else orientation[:3],
                column_cosine=None if orientation is None else orientation[3:],
                position=position,
                pixel_spacing=values.get("pixel_spacing"),
                slice_spacing=values.get("slice_spacing"),
                slope=values.get("slope", 1.0),
                intercept=values.get("intercept", 0.0),
                time_key=values.get("time_key", ()),
                trigger_ms=values.get("trigger_ms"),
                acquisition_s=values.get("acquisition_s"),
                repetition_ms=values.get("repetition_ms"),
                instance=values.get("instance", 0),
                sop_uid=str(ds.get("SOPInstanceUID", "")),
                extra={
                    "stack": values.get("stack"),
                    "spacing_source": values.get("spacing_source"),
                },
            )
        )
    return frames


def decode_pixels(ds, path: Path) -> np.ndarray:
    """Pixel values of all frames, shape ``(frames, rows, columns[, samples])``: stored values,
    colour as RGB (YBR converted by pydicom's decoders, PALETTE COLOR through its palette)."""
    array = _stored_pixels(ds, path)
    if _photometric(ds) == "PALETTE COLOR":
        array = palette_to_rgb(array, ds, path)
    elif "ModalityLUTSequence" in ds:  # instead of rescale (PS3.3 C.11.1): the LUT's values
        array = modality_lut(array, ds, path)
    return array


def _photometric(ds) -> str:
    return str(ds.get("PhotometricInterpretation", "") or "").strip().upper()


def _stored_pixels(ds, path: Path) -> np.ndarray:
    """Stored pixel values of all frames, shape ``(frames, rows, columns[, samples])``.

    Uncompressed little-endian data is viewed straight from the file's bytes; JPEG 2000, JPEG-LS
    and lossless JPEG grayscale frames decode with imagecodecs when installed; everything else
    (and anything imagecodecs returns in an unexpected form) goes through pydicom's decoders.
    """
    rows, columns = int(ds.Rows), int(ds.Columns)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    syntax = _syntax(ds)
    bits = int(ds.get("BitsAllocated", 16))
    stored = int(ds.get("BitsStored", bits))
    signed = int(ds.get("PixelRepresentation", 0))
    dtype = _DTYPES.get((bits, signed))
    if syntax in _NATIVE_LE and samples == 1 and dtype is not None and "PixelData" in ds:
        count = n_frames * rows * columns
        raw = ds.PixelData or b""  # pydicom gives None for an empty value
        if len(raw) < count * np.dtype(dtype).itemsize:
            raise ImageReadError(
                f"pixel data is truncated ({len(raw)} bytes for {n_frames}x{rows}x{columns} "
                f"{bits}-bit pixels)",
                path,
            )
        array = np.frombuffer(raw, dtype=dtype, count=count).reshape(n_frames, rows, columns)
        if stored < bits:
            if signed:
                return _decode_with_pydicom(ds, path, n_frames)
            mask = (1 << stored) - 1
            if array.max(initial=0) > mask:
                array = array & mask
        return array
    if syntax in _CODECS and samples == 1 and dtype is not None:
        array = _decode_with_imagecodecs(ds, _CODECS[syntax], n_frames, (rows, columns), dtype)
        if array is not None:
            return array
    return _decode_with_pydicom(ds, path, n_frames)


def decode_many(items: list[tuple[Any, Path]]) -> list[np.ndarray]:
    """Decode several datasets, compressed ones in parallel threads (codecs release the GIL)."""
    compressed = sum(_syntax(ds) in _CODECS for ds, _ in items)
    if compressed < 2:
        return [decode_pixels(ds, path) for ds, path in items]
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(items), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda item: decode_pixels(*item), items))


def _decode_with_imagecodecs(
    ds, codec: str, n_frames: int, shape: tuple[int, int], dtype
) -> np.ndarray | None:
    try:
        import imagecodecs
        from pydicom.encaps import generate_frames
    except ImportError:
        return None
    decode = getattr(imagecodecs, f"{codec}_decode", None)
    if decode is None or not getattr(imagecodecs, codec.upper(), None):
        return None
    out = np.empty((n_frames, *shape), dtype=dtype)
    try:
        for index, fragment in enumerate(generate_frames(ds.PixelData, number_of_frames=n_frames)):
            frame = decode(fragment)
            if frame.shape != shape or frame.dtype != out.dtype:
                return None  # e.g. sign or precision handled by pydicom's corrections
            out[index] = frame
    except Exception:  # any codec trouble: let pydicom decide and report
        return None
    return out


def _syntax(ds) -> str:
    file_meta = getattr(ds, "file_meta", None)
    return str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""


def _decode_with_pydicom(ds, path: Path, n_frames: int) -> np.ndarray:
    try:
        array = ds.pixel_array
    except Exception as exc:  # decoder plugins raise many exception types
        raise ImageReadError(f"cannot decode pixel data ({_short(exc)})", path) from None
    array = np.asarray(array)
    rows, columns = int(ds.Rows), int(ds.Columns)
    if n_frames == 1 and array.shape[:2] == (rows, columns):
        array = array[None]
    if array.shape[:3] != (n_frames, rows, columns):  # pydicom sizes by the data it was given
        raise ImageReadError(
            f"pixel data decodes to shape {array.shape}, not {n_frames} frames of {rows}x{columns}",
            path,
        )
    return array


def _attributes(ds) -> dict:
    """Per-file values of a classic (single-frame) image."""
    out: dict = {"instance": _int(ds.get("InstanceNumber"), 0)}
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    if orientation is not None:
        out["orientation"] = orientation
    position = _floats(ds.get("ImagePositionPatient"), 3)
    if position is not None:
        out["position"] = position
    spacing, source = pixel_spacing(ds)
    if spacing is not None:
        out["pixel_spacing"] = spacing
    out["spacing_source"] = source
    between = _float(ds.get("SpacingBetweenSlices")) or _float(ds.get("SliceThickness"))
    if between:
        out["slice_spacing"] = abs(between)
    lut = "ModalityLUTSequence" in ds  # applied when decoding, in place of the rescale
    out["slope"] = 1.0 if lut else _rescale(ds, "RescaleSlope", 1.0)
    out["intercept"] = 0.0 if lut else _rescale(ds, "RescaleIntercept", 0.0)
    acquisition = _dicom_time(ds.get("AcquisitionTime")) or _dicom_time(ds.get("ContentTime"))
    trigger = _float(ds.get("TriggerTime"))
    out["time_key"] = (
        _int(ds.get("TemporalPositionIdentifier"), 0),
        trigger if trigger is not None else 0.0,
        _int(ds.get("AcquisitionNumber"), 0),
        acquisition if acquisition is not None else 0.0,
        out["instance"],
    )
    out["trigger_ms"] = trigger
    out["acquisition_s"] = acquisition
    out["repetition_ms"] = _float(ds.get("RepetitionTime"))
    return out


def _functional_groups(groups) -> dict:
    """Geometry, rescale and temporal values from enhanced-object functional group items."""
    out: dict = {}
    if not groups:
        return out
    item = groups[0]
    if "PlaneOrientationSequence" in item:
        value = _floats(item.PlaneOrientationSequence[0].get("ImageOrientationPatient"), 6)
        if value is not None:
            out["orientation"] = value
    if "PlanePositionSequence" in item:
        value = _floats(item.PlanePositionSequence[0].get("ImagePositionPatient"), 3)
        if value is not None:
            out["position"] = value
    if "PixelMeasuresSequence" in item:
        measures = item.PixelMeasuresSequence[0]
        spacing = _floats(measures.get("PixelSpacing"), 2)
        if spacing is not None:
            out["pixel_spacing"] = (float(spacing[0]), float(spacing[1]))
        between = _float(measures.get("SpacingBetweenSlices")) or _float(
            measures.get("SliceThickness")
        )
        if between:
            out["slice_spacing"] = abs(between)
    if "PixelValueTransformationSequence" in item:
        transform = item.PixelValueTransformationSequence[0]
        out["slope"] = _rescale(transform, "RescaleSlope", 1.0)
        out["intercept"] = _rescale(transform, "RescaleIntercept", 0.0)
    if "FrameContentSequence" in item:
        content = item.FrameContentSequence[0]
        acquired = _dicom_datetime(content.get("FrameAcquisitionDateTime"))
        temporal = _int(content.get("TemporalPositionIndex"), 0)
        out["time_key"] = (
            temporal,
            0.0,
            0,
            acquired or 0.0,
            _int(content.get("InStackPositionNumber"), 0),
        )
        out["acquisition_s"] = acquired
        if content.get("StackID") is not None:
            out["stack"] = str(content.StackID)
    if "CardiacSynchronizationSequence" in item:
        delay = _float(item.CardiacSynchronizationSequence[0].get("NominalCardiacTriggerDelayTime"))
        if delay is not None:
            key = list(out.get("time_key", (0, 0.0, 0, 0.0, 0)))
            key[1] = delay
            out["time_key"] = tuple(key)
            out["trigger_ms"] = delay
    return out


def _legacy_multiframe(ds, index: int, values: dict) -> dict:
    """Multi-frame files without functional groups (NM, US cine): frames along time or slices."""
    out: dict = {}
    frame_time = _float(ds.get("FrameTime"))
    vector = _floats(ds.get("FrameTimeVector"), int(ds.get("NumberOfFrames", 1) or 1))
    if frame_time is not None or vector is not None:  # cine: time points at one position
        out["time_key"] = (index,)
        # FrameTimeVector holds the increments from the previous frame (the first is 0)
        out["trigger_ms"] = float(vector[: index + 1].sum()) if vector is not None else (
            index * frame_time)  # fmt: skip
        return out
    position = values.get("position")
    orientation = values.get("orientation")
    spacing = values.get("slice_spacing")
    if position is not None and orientation is not None and spacing:
        normal = np.cross(orientation[:3], orientation[3:])
        out["position"] = position + index * spacing * normal
    out["time_key"] = ()
    out["instance"] = index
    return out


class _BadAttribute(ValueError):
    """An attribute whose value would silently give wrong pixel values."""


def _rescale(ds, keyword: str, default: float) -> float:
    """Rescale Slope or Intercept: absent means ``default``; present must be a finite number
    (and a slope must not be 0), since guessing would give wrong modality values silently."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    number = _float(value)
    if number is None or (keyword == "RescaleSlope" and number == 0):
        raise _BadAttribute(f"{keyword} {str(value)!r} is not a usable number")
    return number


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
