"""What ``medlens register`` writes, and the landmark files it reads.

Into the output folder: ``warped.nii.gz`` (the moving image on the fixed grid; 2D images also as
``warped.png``), ``warped_labels.nii.gz`` when moving labels are given, ``displacement.nii.gz``
(ITK's displacement field of the whole transform, fixed LPS mm -> moving), ``affine.tfm`` (the
affine alone, for SimpleITK and 3D Slicer) and ``metrics.json``: the similarity before and after,
with labels the Dice and HD95 per label before (the images' own world alignment) and after, with
landmarks the target registration error, and the deformation's folding fraction and SDlogJ;
given the registration the other way as well (``medlens register --inverse-consistency``), the
inverse consistency: how far each fixed voxel's point lands from itself through the forward
transform and then the backward one (mm).

Landmark files are CSVs of index coordinates (pixels or voxels from 0, as ANHIR's are): a header
naming ``X``, ``Y`` (and ``Z``) columns, and optionally a first column of landmark numbers; two
files are matched by those numbers when both have them, by order otherwise.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from medlens._atomic import atomic_write_json
from medlens.errors import MedlensError
from medlens.image import Image
from medlens.registration.register import Registration
from medlens.registration.transform_io import write_affine, write_displacement

__all__ = ["inverse_consistency", "read_landmarks", "registration_metrics", "write_registration"]


def read_landmarks(path) -> tuple[list[str] | None, np.ndarray]:
    """``(ids or None, points (N, n))`` from a landmark CSV (see the module's notes)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as error:
        raise MedlensError(f"cannot read the landmarks ({error})", path) from error
    if len(rows) < 2:
        raise MedlensError("no landmarks (a header and one row per landmark expected)", path)
    header = [h.strip().lower() for h in rows[0]]
    columns = [header.index(a) for a in ("x", "y", "z") if a in header]
    if len(columns) < 2:
        raise MedlensError(f"header {rows[0]}: name the X and Y (and Z) columns", path)
    first = 0 if 0 not in columns else None
    ids, points = [], []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            points.append([float(row[c]) for c in columns])
        except (ValueError, IndexError):
            raise MedlensError(f"line {number}: not a landmark ({','.join(row)})", path) from None
        if first is not None:
            ids.append(row[first].strip())
    array = np.asarray(points, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise MedlensError("landmarks hold NaN or infinite coordinates", path)
    return (ids if first is not None and all(ids) else None), array


def matched_landmarks(fixed_path, moving_path) -> tuple[np.ndarray, np.ndarray]:
    """The landmarks both files hold, in the same order."""
    fixed_ids, fixed = read_landmarks(fixed_path)
    moving_ids, moving = read_landmarks(moving_path)
    if fixed.shape[1] != moving.shape[1]:
        raise MedlensError(
            f"{fixed.shape[1]}D landmarks against {moving.shape[1]}D ones in {moving_path}",
            fixed_path,
        )
    if fixed_ids is not None and moving_ids is not None:
        index = {name: i for i, name in enumerate(moving_ids)}
        keep = [(i, index[name]) for i, name in enumerate(fixed_ids) if name in index]
        if not keep:
            raise MedlensError(f"no landmark numbers in common with {moving_path}", fixed_path)
        return fixed[[i for i, _ in keep]], moving[[j for _, j in keep]]
    if len(fixed) != len(moving):
        raise MedlensError(
            f"{len(fixed)} landmarks against {len(moving)} in {moving_path} (and no landmark "
            "numbers to match them by)",
            fixed_path,
        )
    return fixed, moving


def _label_scores(fixed_labels: Image, warped: np.ndarray) -> dict[str, Any]:
    from medlens.metrics.segmentation import dice, hausdorff95

    reference = np.asarray(fixed_labels.array)
    spacing = tuple(fixed_labels.spacing)[::-1]
    values = sorted(int(v) for v in np.union1d(np.unique(reference), np.unique(warped)) if v)
    per_label = {}
    for value in values:
        distance = hausdorff95(warped, reference, spacing, label=value)
        per_label[str(value)] = {
            "dice": dice(warped, reference, label=value),
            "hd95_mm": float(distance) if np.isfinite(distance) else None,  # None: one is empty
        }
    mean = float(np.mean([v["dice"] for v in per_label.values()])) if per_label else None
    return {"per_label": per_label, "dice_mean": mean}


def inverse_consistency(forward: Registration, backward: Registration) -> dict[str, Any]:
    """``|T_back(T_forward(p)) - p|`` in mm over the fixed voxels ``p`` whose forward point lies
    inside the moving image (``backward`` registers the fixed image to the moving one): mean,
    median, 95th percentile and maximum, and the fraction of voxels counted."""
    from medlens.registration.apply import index_points

    fixed = forward.fixed
    points = fixed.index_to_world(index_points(fixed.spatial_shape))
    there = forward.map_points(points)
    index = forward.moving.world_to_index(there)
    shape = np.asarray(forward.moving.spatial_shape[::-1], float)
    inside = np.all((index > -0.5) & (index < shape - 0.5), axis=1)
    if not inside.any():
        return {"mean_mm": None, "median_mm": None, "p95_mm": None, "max_mm": None,
                "fraction": 0.0}  # fmt: skip
    error = np.linalg.norm(backward.map_points(there[inside]) - points[inside], axis=1)
    return {
        "mean_mm": float(error.mean()),
        "median_mm": float(np.median(error)),
        "p95_mm": float(np.percentile(error, 95)),
        "max_mm": float(error.max()),
        "fraction": float(inside.mean()),
    }


def registration_metrics(
    result: Registration,
    *,
    fixed_labels: Image | None = None,
    moving_labels: Image | None = None,
    landmarks: tuple[np.ndarray, np.ndarray] | None = None,
    backward: Registration | None = None,
) -> dict[str, Any]:
    """The figures of ``metrics.json`` (see the module's notes)."""
    from medlens.metrics.registration import (
        folding_fraction,
        sdlogj,
        target_registration_error,
    )

    check = next((s.levels[0] for s in result.stages if s.name == "check"), {})
    out: dict[str, Any] = {
        "seconds": round(result.seconds, 3),
        "similarity": {"start": check.get("start"), "registered": check.get("registered")},
        "stages": [{"name": s.name, "levels": s.levels} for s in result.stages],
        "affine": np.asarray(result.world).tolist(),
    }
    if result.field is not None:
        u = result.field[0].numpy()
        out["folding_fraction"] = folding_fraction(u)
        out["sdlogj"] = sdlogj(u)
    else:
        out["folding_fraction"], out["sdlogj"] = 0.0, 0.0
    if fixed_labels is not None and moving_labels is not None:
        before = Registration(result.fixed, result.moving, np.eye(len(result.world)), None)
        out["labels_before"] = _label_scores(
            fixed_labels, np.asarray(before.warp(moving_labels, labels=True).array)
        )
        out["labels"] = _label_scores(
            fixed_labels, np.asarray(result.warp(moving_labels, labels=True).array)
        )
    if landmarks is not None:
        fixed_points, moving_points = landmarks
        mapped = result.map_points(result.fixed.index_to_world(fixed_points))
        target = result.moving.index_to_world(moving_points)
        diagonal = float(np.linalg.norm(np.asarray(result.fixed.size) * result.fixed.spacing))
        before = result.fixed.index_to_world(fixed_points)
        out["landmarks"] = target_registration_error(mapped, target, diagonal=diagonal)
        out["landmarks_before"] = target_registration_error(before, target, diagonal=diagonal)
    if backward is not None:
        out["inverse_consistency"] = inverse_consistency(result, backward)
    return out


def write_registration(
    result: Registration,
    output,
    *,
    fixed_labels: Image | None = None,
    moving_labels: Image | None = None,
    landmarks: tuple[np.ndarray, np.ndarray] | None = None,
    backward: Registration | None = None,
) -> dict[str, Path]:
    """Write the outputs (see the module's notes) into ``output``; returns them by name.
    ``backward``: the fixed image registered to the moving one, for the inverse consistency."""
    from medlens.io import save_image

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    warped = result.warp()
    files = {"warped": save_image(warped, output / "warped.nii.gz")}
    if warped.spatial_dims == 2:
        files["warped_png"] = save_image(_display(warped, result.moving), output / "warped.png")
    if moving_labels is not None:
        labels = result.warp(moving_labels, labels=True)
        files["warped_labels"] = save_image(labels, output / "warped_labels.nii.gz")
    files["displacement"] = write_displacement(
        output / "displacement.nii.gz", result.displacement_mm(), result.fixed
    )
    files["affine"] = write_affine(output / "affine.tfm", result.world)
    metrics = registration_metrics(
        result,
        fixed_labels=fixed_labels,
        moving_labels=moving_labels,
        landmarks=landmarks,
        backward=backward,
    )
    files["metrics"] = output / "metrics.json"
    atomic_write_json(files["metrics"], metrics)
    return files


def _display(image: Image, like: Image) -> Image:
    """A 2D image as 8-bit for a PNG: 8-bit images (RGB histology) keep their values, others
    are scaled by their own 0.5-99.5 percentiles."""
    array = np.asarray(image.array, dtype=np.float32)
    if np.asarray(like.array).dtype == np.uint8:
        return image.with_array(np.clip(array, 0, 255).round().astype(np.uint8))
    low, high = np.percentile(array, [0.5, 99.5]) if array.size else (0.0, 1.0)
    scaled = np.clip((array - low) / max(float(high - low), 1e-6), 0, 1) * 255
    return image.with_array(scaled.round().astype(np.uint8))
