"""``medlens measure cardiac RUN --input CINE --output DIR``: the left ventricle of a cine MRI
segmented in every phase and slice, its volume curve, end-diastole and end-systole, EDV, ESV,
stroke volume and ejection fraction (:mod:`medlens.measure.cardiac`).

``CINE`` is a short-axis cine stack: a DICOM series (one file per slice and phase, grouped by
position and ordered by trigger time, or an enhanced multi-frame file), a 4D NIfTI ``(x, y, z,
t)``, or a folder holding several such series (each is measured). Each frame is segmented by the
2D run as ``medlens predict`` would, the phases of one slice batched through the network together;
regions far (30 mm) from the ventricle's axis are then dropped (:func:`keep_near_ventricle`).
Written to ``DIR`` (atomically):

* ``measurements.csv``: ``series,edv_ml,esv_ml,sv_ml,ef_percent,ed_phase,es_phase`` (phases
  counted from 0 in trigger-time order), plus ``heart_rate_bpm`` where the times are known;
* ``volumes.csv``: ``series,phase,time_ms,volume_ml`` and one ``area_mm2_sN`` column per slice;
* ``<series>_curve.png``: the volume curve with end-diastole and end-systole marked;
* ``<series>_overlay.mp4``: every slice tiled, the cavity outlined, one cycle at real speed;
* ``<series>_lv.nii.gz``: the label maps as a 4D NIfTI (time last), on the cine's grid.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import DatasetError, MedlensError
from medlens.image import Image, Role

__all__ = ["keep_near_ventricle", "measure_cardiac", "read_cine", "segment_cine"]

COLUMNS = ("series", "edv_ml", "esv_ml", "sv_ml", "ef_percent", "ed_phase", "es_phase")


def read_cine(path: str | Path, series_uid: str | None = None) -> Image:
    """A short-axis cine stack ``(t, z, y, x)`` with ``leading=("time",)``; one line if not."""
    from medlens.io import load_image

    image = load_image(path, series_uid=series_uid)
    if image.leading != ("time",) or image.spatial_dims != 3:
        what = f"shape {image.array.shape}" + (f", axes {image.leading}" if image.leading else "")
        raise DatasetError(f"not a cine stack (time, slice, y, x): {what}", path)
    t, z = image.array.shape[:2]
    if t < 2:
        raise DatasetError("a cine of one phase: EF needs the cycle", path)
    if z < 2:
        raise DatasetError("a single-slice cine: volumes need a short-axis stack", path)
    return image


def _label(run, label: int | str | None) -> int:
    names = [str(n).lower() for n in run.info.get("class_names") or []]
    values = [int(v) for v in run.plan.label_values]
    if label is None:
        for wanted in ("left ventricle", "lv", "left_ventricle", "lv cavity"):
            if wanted in names:
                return values[names.index(wanted)]
        return values[1] if len(values) > 1 else 1
    if isinstance(label, str) and not label.isdigit():
        if label.lower() not in names:
            raise MedlensError(f"--label {label}: the run's classes are {', '.join(names)}")
        return values[names.index(label.lower())]
    if int(label) not in values:
        raise MedlensError(f"--label {label}: the run's label values are {values}")
    return int(label)


def segment_cine(run, cine: Image, *, mirror: bool = False, precision: str | None = "bf16",
                 progress: bool = True) -> np.ndarray:  # fmt: skip
    """Label maps ``(t, z, y, x)`` uint8 of every frame of ``cine`` by a 2D segmentation run.

    A cine is hundreds of frames: by default without mirroring and in bf16 where the CPU
    computes it natively (``precision=None``: the plan's), which the module notes measure."""
    import warnings

    from medlens._progress import progress as shown
    from medlens.tasks.segmentation.predict import predict_images

    if run.plan.spatial_dims != 2:
        raise MedlensError(f"{run.path}: a {run.plan.spatial_dims}D run; cine frames need a 2D one")
    t, z, h, w = cine.array.shape
    dx, dy = (float(v) for v in cine.spacing[:2])
    out = np.zeros((t, z, h, w), np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in shown(range(z), "segmenting slices", enabled=progress):  # a slice's phases at once
            frames = [Image(np.asarray(cine.array[i, k], np.float32), spacing=(dx, dy),
                            modality=cine.modality, meta={"path": f"phase {i}, slice {k}"})
                      for i in range(t)]  # fmt: skip
            found = predict_images(run, frames, mirror=mirror, chunk=t, precision=precision)
            for i, labels in enumerate(found):
                out[i, k] = labels.array
    if caught:  # one line for the cine, not one per frame
        first = str(caught[0].message)
        warnings.warn(f"{cine.meta.get('path', 'cine')}: {len(caught)} of {t * z} frames "
                      f"warned, e.g. {first}", stacklevel=2)  # fmt: skip
    return out


def measure_cardiac(run_path: str | Path, source: str | Path, output: str | Path, *,
                    label: int | str | None = None, mirror: bool = False,
                    precision: str | None = "bf16", video: bool = True, progress: bool = True,
                    log=print) -> list[dict[str, Any]]:  # fmt: skip
    """Measure every cine in ``source`` into ``output`` (module notes); returns the rows."""
    from medlens._atomic import ensure_outside
    from medlens.tasks.segmentation.predict import load_segmentation_run

    source, output = Path(source), Path(output)
    if not source.exists():
        raise DatasetError("does not exist", source)
    ensure_outside(output, source)
    run = load_segmentation_run(run_path)
    value = _label(run, label)
    rows, curves = [], []
    for name, uid in _cines(source):
        started = time.perf_counter()
        cine = read_cine(source, uid)
        masks = segment_cine(run, cine, mirror=mirror, precision=precision, progress=progress)
        masks = keep_near_ventricle(masks, value, cine.spacing)
        row, curve = _measure(name, cine, masks, value)
        _write_series(output, name, cine, masks, value, row, curve, video)
        row["seconds"] = round(time.perf_counter() - started, 2)  # reading to files written
        rows.append(row)
        curves.append(curve)
        log(f"{name}: EDV {row['edv_ml']:.1f} ml, ESV {row['esv_ml']:.1f} ml, "
            f"EF {row['ef_percent']:.1f}% ({row['seconds']:.1f} s)")  # fmt: skip
    _write_tables(output, rows, curves)
    return rows


def _cines(source: Path) -> list[tuple[str, str | None]]:
    """``(name, series UID or None)`` of each cine in ``source``."""
    if source.is_dir():
        from medlens.io.dicom import list_series

        found = list_series(source)
        if len(found) > 1:
            from medlens._atomic import safe_name

            names = [safe_name(s.description or s.uid) for s in found]
            if len(set(names)) < len(names):
                names = [safe_name(s.uid) for s in found]
            return [(n, s.uid) for n, s in zip(names, found, strict=True)]
    name = source.name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return [(name, None)]


def keep_near_ventricle(masks: np.ndarray, value: int, spacing, radius_mm: float = 30.0
                        ) -> np.ndarray:  # fmt: skip
    """Label maps ``(t, z, y, x)`` with the regions of ``value`` whose centre lies more than
    ``radius_mm`` from the ventricle's axis removed (set to 0).

    Frame-wise postprocessing keeps each frame's largest region, which in a slice above the base
    or below the apex is whatever else looked like blood (the stomach, the aorta). The ventricle's
    axis is the area-weighted median centre of the regions over the whole cine, which the
    mid-ventricular slices dominate."""
    from scipy import ndimage

    found = masks == value
    if not found.any():
        return masks
    dx, dy = float(spacing[0]), float(spacing[1])
    regions = []  # (t, z, label map, index, centre y, centre x, area)
    for t in range(found.shape[0]):
        for z in range(found.shape[1]):
            labels, n = ndimage.label(found[t, z])
            if n:
                centres = ndimage.center_of_mass(found[t, z], labels, range(1, n + 1))
                areas = ndimage.sum(found[t, z], labels, range(1, n + 1))
                for k, (c, a) in enumerate(zip(centres, areas, strict=True)):
                    regions.append((t, z, labels, k + 1, c[0], c[1], a))
    weights = np.array([r[6] for r in regions])
    cy, cx = (_weighted_median(np.array([r[k] for r in regions]), weights) for k in (4, 5))
    out = masks.copy()
    for t, z, labels, k, y, x, _ in regions:
        if np.hypot((y - cy) * dy, (x - cx) * dx) > radius_mm:
            out[t, z][labels == k] = 0
    return out


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    return float(values[order][np.searchsorted(np.cumsum(weights[order]), weights.sum() / 2)])


def _measure(name: str, cine: Image, masks: np.ndarray, value: int):
    from medlens.measure.cardiac import cardiac_indices, cavity_areas, volume_curve

    dx, dy, dz = (float(v) for v in cine.spacing)
    areas = cavity_areas(masks, (dx, dy), value)
    volumes = volume_curve(areas, dz)
    indices = cardiac_indices(volumes)
    times = cine.meta.get("time_points")
    if times is None and cine.meta.get("time_step"):  # a 4D NIfTI: its time step
        times = [i * float(cine.meta["time_step"]) for i in range(len(volumes))]
    known = times is not None and len(times) == len(volumes)
    times_ms = np.asarray(times, float) * 1000.0 if known else None
    row: dict[str, Any] = {"series": name, **indices}
    if times_ms is not None and len(times_ms) > 1:
        cycle = float(np.median(np.diff(times_ms))) * len(times_ms)  # the phases span one beat
        row["heart_rate_bpm"] = round(60000.0 / cycle, 1) if cycle > 0 else None
    return row, {"areas": areas, "volumes": volumes, "times_ms": times_ms}


def _write_series(output: Path, name: str, cine: Image, masks: np.ndarray, value: int,
                  row: dict[str, Any], curve: dict[str, Any], video: bool) -> None:  # fmt: skip
    from medlens._atomic import atomic_write_bytes
    from medlens.io import save_image

    output.mkdir(parents=True, exist_ok=True)
    save_image(cine.with_array((masks == value).astype(np.uint8), role=Role.LABEL),
               output / f"{name}_lv.nii.gz")  # fmt: skip
    atomic_write_bytes(output / f"{name}_curve.png", _curve_png(name, row, curve))
    if video:
        from medlens.io.video import write_video

        times = curve["times_ms"]
        step = float(np.median(np.diff(times))) if times is not None and len(times) > 1 else 40.0
        frames = _overlay_frames(cine.array, masks == value)
        write_video(
            frames, output / f"{name}_overlay.mp4", fps=1000.0 / step if step > 0 else 25.0
        )  # one cycle: players loop it


def _curve_png(name: str, row: dict[str, Any], curve: dict[str, Any]) -> bytes:
    from medlens.report.figures import new_figure, to_png

    volumes = curve["volumes"]
    x = curve["times_ms"] if curve["times_ms"] is not None else np.arange(len(volumes))
    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x, volumes, "o-", color="tab:red", markersize=3)
    for key, colour in (("ed_phase", "tab:blue"), ("es_phase", "tab:green")):
        k = row[key]
        ax.axvline(x[k], color=colour, linestyle="--", linewidth=1)
        ax.annotate(f"{'ED' if key == 'ed_phase' else 'ES'} {volumes[k]:.0f} ml",
                    (x[k], volumes[k]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8, color=colour)  # fmt: skip
    ax.set_xlabel("time in the cycle (ms)" if curve["times_ms"] is not None else "phase")
    ax.set_ylabel("left-ventricular volume (ml)")
    ax.set_title(f"{name}: EF {row['ef_percent']:.1f}%, SV {row['sv_ml']:.0f} ml", fontsize=9)
    ax.grid(alpha=0.3)
    return to_png(fig)


def _overlay_frames(array: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """RGB uint8 frames ``(t, H, W, 3)``: every slice tiled (rows of up to 4), the cavity's
    outline in red, one grey window (the 0.5-99.5th percentiles) for the whole cine."""
    t, z, h, w = array.shape
    low, high = np.percentile(array, (0.5, 99.5))
    grey = np.clip((array - low) / max(high - low, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    inner = masks.copy()  # erosion by the 4-neighbourhood, every frame at once
    inner[..., 1:, :] &= masks[..., :-1, :]
    inner[..., :-1, :] &= masks[..., 1:, :]
    inner[..., :, 1:] &= masks[..., :, :-1]
    inner[..., :, :-1] &= masks[..., :, 1:]
    edge = masks & ~inner
    cols = min(z, 4)
    rows = -(-z // cols)
    out = np.zeros((t, rows * h, cols * w, 3), np.uint8)
    for k in range(z):
        r, c = divmod(k, cols)
        tile = np.repeat(grey[:, k, :, :, None], 3, axis=-1)
        tile[edge[:, k]] = (255, 40, 40)
        out[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    return out


def _write_tables(output: Path, rows: list[dict[str, Any]], curves: list[dict[str, Any]]) -> None:
    from medlens._atomic import atomic_write_text

    extra = [k for k in ("heart_rate_bpm", "seconds") if any(k in r for r in rows)]
    header = [*COLUMNS, *extra]
    lines = [",".join(header)]
    for row in rows:
        cells = [row.get(k) for k in header]
        lines.append(",".join(f"{v:.2f}" if isinstance(v, float) else "" if v is None else str(v)
                              for v in cells))  # fmt: skip
    atomic_write_text(output / "measurements.csv", "\n".join(lines) + "\n")
    slices = max(c["areas"].shape[1] for c in curves)
    table = [",".join(["series", "phase", "time_ms", "volume_ml",
                       *(f"area_mm2_s{k}" for k in range(slices))])]  # fmt: skip
    for row, curve in zip(rows, curves, strict=True):
        for i, volume in enumerate(curve["volumes"]):
            when = "" if curve["times_ms"] is None else f"{curve['times_ms'][i]:.1f}"
            areas = [f"{a:.1f}" for a in curve["areas"][i]]
            table.append(",".join([row["series"], str(i), when, f"{volume:.2f}", *areas]))
    atomic_write_text(output / "volumes.csv", "\n".join(table) + "\n")
