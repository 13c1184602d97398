"""Frames of one series into a volume (``(z, y, x)``) or a temporal series (``(t, z, y, x)``).

Slices are ordered by their position along the slice normal (never by file name or instance number
alone); frames sharing a position are time points ordered by the DICOM temporal attributes. The
slice spacing comes from the positions, and gaps, uneven spacing, mixed orientations or sizes are
reported instead of silently producing a wrong geometry.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from medlens.errors import SeriesError
from medlens.image import Image, Role
from medlens.io._checks import require_finite
from medlens.io._dicom_frames import Frame, decode_many

__all__ = ["SliceSpacingWarning", "assemble"]

_POSITION_TOL = 0.01  # mm: frames closer than this along the normal share a position
_ORIENTATION_TOL = 1e-4


class SliceSpacingWarning(UserWarning):
    """Slice positions are unevenly spaced (the volume's spacing is their mean)."""


def assemble(frames: list[Frame], source: Path, *, strict: bool = True) -> Image:
    """Build an :class:`Image` from the frames of one series.

    Args:
        frames: all frames of the series, in any order.
        source: the file or folder they came from (named in errors).
        strict: raise on missing slices; with ``False`` only warn.
    """
    if not frames:
        raise SeriesError("no image frames found", source)
    _check_sizes(frames, source)
    geometric = [f for f in frames if f.position is not None and f.row_cosine is not None]
    if len(geometric) != len(frames):
        if geometric:
            raise SeriesError(
                f"{len(frames) - len(geometric)} of {len(frames)} images lack position or "
                "orientation",
                source,
            )
        return _assemble_planar(frames, source)
    _check_orientation(frames, source)
    first = frames[0]
    normal = np.cross(first.row_cosine, first.column_cosine)
    length = float(np.linalg.norm(normal))
    if not length > 1e-3:  # zero or parallel direction cosines: no plane, no slice order
        cosines = np.concatenate([first.row_cosine, first.column_cosine]).tolist()
        raise SeriesError(
            f"Image Orientation (Patient) {cosines} is not two perpendicular directions "
            f"(in {first.path.name})",
            source,
        )
    normal /= length
    distance = np.array([float(f.position @ normal) for f in frames])
    order = np.argsort(distance, kind="stable")
    groups: list[list[int]] = []
    for index in order:
        if groups and distance[index] - distance[groups[-1][0]] <= _POSITION_TOL:
            groups[-1].append(int(index))
        else:
            groups.append([int(index)])
    groups = [_drop_duplicates(g, frames) for g in groups]
    counts = Counter(len(g) for g in groups)
    if len(counts) > 1:
        usual = counts.most_common(1)[0][0]
        odd = next(g for g in groups if len(g) != usual)
        raise SeriesError(
            f"incomplete temporal series: the position at {distance[odd[0]]:.2f} mm along the "
            f"slice normal has {len(odd)} images where others have {usual} "
            f"(e.g. {frames[odd[0]].path.name})",
            source,
        )
    time_points = len(groups[0])
    for group in groups:
        group.sort(key=lambda i: frames[i].time_key)

    positions = np.array([distance[g[0]] for g in groups])
    slice_spacing = _slice_spacing(positions, groups, frames, source, strict=strict)
    _check_tilt(frames, groups, normal, source)

    stack_shape = (time_points, len(groups), first.rows, first.columns)
    array = _fill(frames, [[g[t] for g in groups] for t in range(time_points)], stack_shape, source)
    direction = np.column_stack([first.row_cosine, first.column_cosine, normal])
    dy, dx = first.pixel_spacing or (1.0, 1.0)
    origin = frames[groups[0][0]].position
    meta = _meta(frames, source)
    leading: tuple[str, ...] = ()
    if time_points > 1:
        leading = ("time",)
        times = _time_points([frames[groups[0][t]] for t in range(time_points)])
        if times is not None:
            meta["time_points"] = times
        # which file holds each frame (time, slice): contours and reads drawn on one file
        meta["frame_files"] = [[frames[g[t]].path.name for g in groups]
                               for t in range(time_points)]  # fmt: skip
    else:
        array = array[0]
    return Image(
        array,
        spacing=(dx, dy, slice_spacing),
        origin=tuple(origin),
        direction=direction,
        role=Role.LABEL if meta.get("modality") == "SEG" else Role.INTENSITY,
        modality=meta.get("modality"),
        leading=leading,
        meta=meta,
    )


def _assemble_planar(frames: list[Frame], source: Path) -> Image:
    """Images without patient geometry (projection X-ray, secondary capture, US cine, NM)."""
    frames = sorted(frames, key=lambda f: (f.time_key, f.instance))
    axes = _nm_frame_axes(frames)
    if axes is not None:
        return _assemble_nm(frames, axes, source)
    first = frames[0]
    shape = (1, len(frames), first.rows, first.columns)
    array = _fill(frames, [list(range(len(frames)))], shape, source)
    array = array[0]
    dy, dx = first.pixel_spacing or (1.0, 1.0)
    meta = _meta(frames, source)
    if first.samples > 1:  # colour: (frames, y, x, s) -> ([t,] s, y, x)
        channels = np.ascontiguousarray(np.moveaxis(array, -1, 1))
        if len(frames) == 1:
            return Image(channels[0], spacing=(dx, dy), leading=("channel",),
                         modality=meta.get("modality"), meta=meta)  # fmt: skip
        times = _time_points(frames)
        if times is not None:
            meta["time_points"] = times
        return Image(channels, spacing=(dx, dy), leading=("time", "channel"),
                     modality=meta.get("modality"), meta=meta)  # fmt: skip
    if len(frames) == 1:
        return Image(array[0], spacing=(dx, dy), modality=meta.get("modality"), meta=meta)
    times = _time_points(frames)
    if times is not None:
        meta["time_points"] = times
    return Image(array, spacing=(dx, dy), leading=("time",), modality=meta.get("modality"),
                 meta=meta)  # fmt: skip


_NM_TIME = {"TimeSlotVector", "TimeSliceVector", "RRIntervalVector", "PhaseVector"}


def _nm_frame_axes(frames: list[Frame]) -> dict[str, list[int]] | None:
    """NM multi-frame: the vectors its Frame Increment Pointer names, one value per frame."""
    ds = frames[0].dataset
    if len({id(f.dataset) for f in frames}) != 1 or "FrameIncrementPointer" not in ds:
        return None
    from pydicom.datadict import keyword_for_tag

    pointers = ds.FrameIncrementPointer
    pointers = [pointers] if isinstance(pointers, int) else list(pointers)
    axes: dict[str, list[int]] = {}
    for tag in pointers:
        keyword = keyword_for_tag(int(tag))
        values = ds.get(keyword)
        if not keyword.endswith("Vector") or keyword == "FrameTimeVector" or values is None:
            continue
        values = [int(v) for v in (values if not isinstance(values, int) else [values])]
        if len(values) != len(frames):
            raise SeriesError(f"{keyword} has {len(values)} values for {len(frames)} frames",
                              frames[0].path)  # fmt: skip
        axes[keyword] = values
    return axes or None


def _assemble_nm(frames: list[Frame], axes: dict[str, list[int]], source: Path) -> Image:
    """Frames ordered by the named vectors (energy window, detector, ...), stacked on one axis:
    ``time`` when a time, phase or R-R vector varies, ``channel`` otherwise; ``meta`` keeps the
    axes' names and each frame's index along them."""
    ordered = sorted(frames, key=lambda f: (tuple(v[f.frame] for v in axes.values()), f.frame))
    first = ordered[0]
    array = _fill(ordered, [list(range(len(ordered)))], (1, len(ordered), first.rows,
                                                          first.columns), source)[0]  # fmt: skip
    meta = _meta(ordered, source)
    meta["frame_axes"] = list(axes)
    meta["frame_index"] = {
        name: [values[f.frame] for f in ordered] for name, values in axes.items()
    }
    varying = [name for name, values in axes.items() if len(set(values)) > 1]
    leading = ("time",) if any(name in _NM_TIME for name in varying) else ("channel",)
    dy, dx = first.pixel_spacing or (1.0, 1.0)
    if len(ordered) == 1:
        return Image(array[0], spacing=(dx, dy), modality=meta.get("modality"), meta=meta)
    return Image(array, spacing=(dx, dy), leading=leading, modality=meta.get("modality"),
                 meta=meta)  # fmt: skip


def _fill(
    frames: list[Frame], layout: list[list[int]], shape: tuple[int, ...], source: Path
) -> np.ndarray:
    """Decode each file once and place its frames, applying rescale slope and intercept."""
    datasets = {id(f.dataset): (f.dataset, f.path) for f in frames}
    decoded = dict(zip(datasets, decode_many(list(datasets.values())), strict=True))

    def pixels(frame: Frame) -> np.ndarray:
        return decoded[id(frame.dataset)][frame.frame]

    slopes = {(f.slope, f.intercept) for f in frames}
    sample = pixels(frames[layout[0][0]])
    extra = sample.shape[2:]
    if slopes == {(1.0, 0.0)}:
        dtype = sample.dtype
    elif all(float(s).is_integer() and float(i).is_integer() for s, i in slopes):
        dtype = _integer_dtype(frames, slopes, sample.dtype)
    else:
        dtype = np.dtype(np.float32)
    out = np.empty((*shape, *extra), dtype=dtype)
    for t, row in enumerate(layout):
        for z, index in enumerate(row):
            frame = frames[index]
            values = pixels(frame)
            if frame.slope != 1.0 or frame.intercept != 0.0:
                if dtype.kind == "f":
                    values = values.astype(np.float32) * np.float32(frame.slope) + np.float32(
                        frame.intercept
                    )
                else:
                    values = values.astype(dtype) * int(frame.slope) + int(frame.intercept)
            out[t, z] = values
    return require_finite(out, source)  # float pixel data, or a NaN rescale slope


def _integer_dtype(frames: list[Frame], slopes: set, stored: np.dtype) -> np.dtype:
    """Smallest signed integer type holding every rescaled value the stored bits allow."""
    ds = frames[0].dataset
    bits = int(ds.get("BitsStored", stored.itemsize * 8) or stored.itemsize * 8)
    if int(ds.get("PixelRepresentation", 0) or 0):
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        low, high = 0, (1 << bits) - 1
    candidates = [s * v + i for s, i in slopes for v in (low, high)]
    lo, hi = min(candidates), max(candidates)
    for dtype in (np.int16, np.int32):
        if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.float64)


def _slice_spacing(
    positions: np.ndarray,
    groups: list[list[int]],
    frames: list[Frame],
    source: Path,
    *,
    strict: bool,
) -> float:
    if len(positions) == 1:
        return frames[groups[0][0]].slice_spacing or 1.0
    gaps = np.diff(positions)
    typical = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - typical)))
    if gaps[worst] > 1.5 * typical:
        missing = round(gaps[worst] / typical) - 1
        message = (
            f"{missing} missing slice(s): gap of {gaps[worst]:.3g} mm between "
            f"{frames[groups[worst][0]].path.name} and {frames[groups[worst + 1][0]].path.name} "
            f"where slices are {typical:.3g} mm apart"
        )
        if strict:
            raise SeriesError(message, source)
        warnings.warn(f"{source}: {message}", SliceSpacingWarning, stacklevel=3)
    elif abs(gaps[worst] - typical) > 0.01 * typical + 1e-3:
        warnings.warn(
            f"{source}: uneven slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm); "
            "the mean is used",
            SliceSpacingWarning,
            stacklevel=3,
        )
    return float((positions[-1] - positions[0]) / (len(positions) - 1))


def _check_sizes(frames: list[Frame], source: Path) -> None:
    sizes = Counter((f.rows, f.columns, f.samples) for f in frames)
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c} ({n} images)" for (r, c, _), n in sizes.most_common())
        raise SeriesError(f"images of different sizes in one series: {listed}", source)


def _check_orientation(frames: list[Frame], source: Path) -> None:
    reference = np.concatenate([frames[0].row_cosine, frames[0].column_cosine])
    odd = [
        f
        for f in frames
        if not np.allclose(
            np.concatenate([f.row_cosine, f.column_cosine]), reference, atol=_ORIENTATION_TOL
        )
    ]
    if odd:
        raise SeriesError(
            f"mixed orientations in one series: {len(odd)} of {len(frames)} images differ "
            f"from {frames[0].path.name} (e.g. {odd[0].path.name}; a localiser?)",
            source,
        )


def _check_tilt(frames: list[Frame], groups: list[list[int]], normal: np.ndarray, source) -> None:
    if len(groups) < 2:
        return
    step = frames[groups[-1][0]].position - frames[groups[0][0]].position
    along = step @ normal
    if np.linalg.norm(step - along * normal) > 0.01 * abs(along) + 0.01:
        warnings.warn(
            f"{source}: slice positions are not along the slice normal (gantry tilt?); the "
            "volume is placed with an orthogonal grid",
            SliceSpacingWarning,
            stacklevel=3,
        )


def _time_points(frames: list[Frame]) -> list[float] | None:
    """Seconds from the first time point, from the first attribute that increases over time."""
    candidates = (
        [None if f.trigger_ms is None else f.trigger_ms / 1000.0 for f in frames],
        [f.acquisition_s for f in frames],
    )
    for values in candidates:
        if all(v is not None for v in values) and np.all(np.diff(values) > 0):
            return [float(v - values[0]) for v in values]
    repetition = frames[0].repetition_ms
    if repetition:  # fMRI without per-volume times: volumes are one TR apart
        return [i * repetition / 1000.0 for i in range(len(frames))]
    return None


def _drop_duplicates(group: list[int], frames: list[Frame]) -> list[int]:
    seen: set = set()
    kept = []
    for index in group:
        frame = frames[index]
        key = (frame.sop_uid, frame.frame) if frame.sop_uid else (str(frame.path), frame.frame)
        if key not in seen:
            seen.add(key)
            kept.append(index)
    return kept


def _meta(frames: list[Frame], source: Path) -> dict:
    ds = frames[0].dataset
    files = sorted({str(f.path) for f in frames})
    meta: dict = {"path": str(source), "format": "dicom", "files": files}
    for key, name in (
        ("modality", "Modality"),
        ("series_uid", "SeriesInstanceUID"),
        ("study_uid", "StudyInstanceUID"),
        ("frame_of_reference_uid", "FrameOfReferenceUID"),
        ("series_description", "SeriesDescription"),
        ("patient_id", "PatientID"),
        ("body_part", "BodyPartExamined"),
        ("manufacturer", "Manufacturer"),
        ("photometric", "PhotometricInterpretation"),
    ):
        value = ds.get(name)
        if value not in (None, ""):
            meta[key] = str(value)
    if frames[0].extra.get("spacing_source"):
        meta["pixel_spacing_source"] = frames[0].extra["spacing_source"]
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None and "TransferSyntaxUID" in file_meta:
        meta["transfer_syntax"] = str(file_meta.TransferSyntaxUID)
    if ds.get("VOILUTFunction"):
        meta["voi_function"] = str(ds.VOILUTFunction)
    for key, name in (("window_center", "WindowCenter"), ("window_width", "WindowWidth")):
        value = ds.get(name)
        if value is not None:
            first = value[0] if hasattr(value, "__len__") and not isinstance(value, str) else value
            with contextlib.suppress(TypeError, ValueError):
                meta[key] = float(first)
    return meta
