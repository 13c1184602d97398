"""SIMULATED beating hearts: an ellipsoidal left ventricle whose wall moves through a cardiac
cycle, rendered into real short-axis cine backgrounds, with known volumes and ejection fraction.

Each case takes a real cine stack ``(t, z, y, x)`` (a Sunnybrook patient's, where the expert
contours locate the ventricle; elsewhere the image centre), crops ``size`` x ``size`` pixels
around the ventricle and paints over it, in every phase and slice:

* the cavity: half a prolate ellipsoid from the base (the first slices) towards the apex, short
  semi-axes ``a, b`` (20-30 mm at end-diastole) and long semi-axis ``c`` (55-85 mm), the bright
  blood pool;
* the myocardium around it: a shell 7-11 mm thick at end-diastole whose volume stays constant
  through the cycle (it thickens as the cavity empties), dark;
* partial volume from 3x3 supersampling in plane, complex Gaussian noise taken to its magnitude
  (Rician, 3-6% of the blood signal).

The cavity follows a cycle of ``t`` phases: systole over the first 35% of the cycle (the volume
falls smoothly to end-systole), early filling over the next 45% (to 90% of the stroke volume),
then diastasis and the atrial kick to end-diastole; the cycle starts at a random phase. The
target ejection fraction (uniform in ``ef_range``) sets the contraction: the long axis shortens
by ``(1 - EF)^0.2`` and the short axes take the rest. Everything outside the outer wall is the
real cine, moving as it moved.

Each phantom is its own subject (its geometry and EF are drawn anew); ``background`` names the
patient whose cine it is painted over, so a test set can take backgrounds no training case has.

The truth is what a perfect segmentation would measure: the label maps (1 cavity, 2 myocardium)
are those of the voxel centres, and ``cases.csv`` holds the volumes and EF of the cavity's label
maps by the summation of discs (:mod:`medlens.measure.cardiac`) beside the analytic EF. Every file
says SIMULATED (``dataset.json``, ``README.txt``, ``cases.csv``'s ``simulated`` column).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import DatasetError, MedlensError
from medlens.image import Image, Role

__all__ = ["cycle", "render_case", "simulate_cine_dataset"]

_SUPER = 3  # supersampling per in-plane axis
_README = """SIMULATED beating-heart phantoms ({count} cases) made by medlens.

An ellipsoidal left ventricle (cavity label 1, myocardium label 2) whose wall moves through a
cardiac cycle is painted over the heart of real short-axis cine MRI (backgrounds: {sources}).
The volumes and ejection fractions in cases.csv are those of the label maps (summation of
discs): they are known by construction. These are not patients' measurements.
"""


def cycle(phases: int, start: int = 0) -> np.ndarray:
    """The contraction ``f`` (0 at end-diastole, 1 at end-systole) of each phase."""
    phi = ((np.arange(phases) - start) % phases) / phases
    f = np.zeros(phases)
    systole = phi < 0.35
    f[systole] = np.sin(np.pi * phi[systole] / 0.7) ** 2
    filling = (phi >= 0.35) & (phi < 0.8)  # early filling leaves a tenth
    f[filling] = 0.1 + 0.9 * np.cos(np.pi * (phi[filling] - 0.35) / 0.9) ** 2
    late = phi >= 0.8  # diastasis and the atrial kick: end-diastole is the cycle's start
    f[late] = 0.1 * np.cos(np.pi * (phi[late] - 0.8) / 0.4) ** 2
    return f


def _shell(a: float, b: float, c: float, volume: float) -> float:
    """The wall thickness ``w`` for which the half-ellipsoid shell ``(a+w, b+w, c+w)`` minus
    ``(a, b, c)`` holds ``volume`` (bisection)."""
    inner = a * b * c
    low, high = 0.0, 40.0
    for _ in range(50):
        w = (low + high) / 2
        if 2 / 3 * np.pi * ((a + w) * (b + w) * (c + w) - inner) < volume:
            low = w
        else:
            high = w
    return (low + high) / 2


def render_case(background: np.ndarray, spacing: tuple[float, float, float],
                centre: tuple[float, float], rng: np.random.Generator,
                ef_range: tuple[float, float] = (20.0, 70.0)
                ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:  # fmt: skip
    """One phantom painted over ``background`` ``(t, z, y, x)`` (see the module's notes):
    ``(cine float32, labels uint8, truth)``; ``centre`` is the ventricle's ``(y, x)`` pixel."""
    t, z, h, w = background.shape
    dx, dy, dz = (float(s) for s in spacing)
    ef = rng.uniform(*ef_range) / 100
    a0, c0 = rng.uniform(20, 30), rng.uniform(55, 85)
    b0, wall0 = a0 * rng.uniform(0.85, 1.0), rng.uniform(7, 11)
    base = int(rng.integers(0, max(1, min(2, z - 3))))  # the base plane's slice
    long_es = (1 - ef) ** 0.2
    short_es = np.sqrt((1 - ef) / long_es)
    f = cycle(t, int(rng.integers(0, t)))
    myo = 2 / 3 * np.pi * ((a0 + wall0) * (b0 + wall0) * (c0 + wall0) - a0 * b0 * c0)
    cy = centre[0] + rng.uniform(-3, 3) / dy
    cx = centre[1] + rng.uniform(-3, 3) / dx
    offsets = (np.arange(_SUPER) - (_SUPER - 1) / 2) / _SUPER
    ys = ((np.arange(h)[:, None] + offsets[None]).reshape(-1) - cy) * dy  # supersampled mm
    xs = ((np.arange(w)[:, None] + offsets[None]).reshape(-1) - cx) * dx
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    yc, xc = np.meshgrid((np.arange(h) - cy) * dy, (np.arange(w) - cx) * dx, indexing="ij")
    region = background[
        :, :, int(max(cy - 20, 0)) : int(cy + 20), int(max(cx - 20, 0)) : int(cx + 20)
    ]
    blood = float(np.percentile(region, 95))
    dark = float(np.percentile(region, 15))
    sigma = rng.uniform(0.03, 0.06) * blood
    cine = np.empty((t, z, h, w), np.float32)
    labels = np.zeros((t, z, h, w), np.uint8)
    for i in range(t):
        s_short, s_long = 1 - (1 - short_es) * f[i], 1 - (1 - long_es) * f[i]
        a, b, c = a0 * s_short, b0 * s_short, c0 * s_long
        thick = _shell(a, b, c, myo)
        for k in range(z):
            depth = (k - base) * dz  # distance from the base plane towards the apex
            frame = np.asarray(background[i, k], np.float32)
            if depth < 0:
                cine[i, k] = frame
                continue
            inner = 1 - (depth / c) ** 2 if depth < c else -1.0
            outer = 1 - (depth / (c + thick)) ** 2 if depth < c + thick else -1.0
            fine_in = (
                (xx / a) ** 2 + (yy / b) ** 2 <= inner if inner > 0 else np.zeros_like(xx, bool)
            )
            fine_out = ((xx / (a + thick)) ** 2 + (yy / (b + thick)) ** 2 <= outer if outer > 0
                        else np.zeros_like(xx, bool))  # fmt: skip
            frac_in = fine_in.reshape(h, _SUPER, w, _SUPER).mean(axis=(1, 3))
            frac_out = fine_out.reshape(h, _SUPER, w, _SUPER).mean(axis=(1, 3))
            painted = frac_in * blood + (frac_out - frac_in) * dark + (1 - frac_out) * frame
            cine[i, k] = painted
            if inner > 0:
                labels[i, k][(xc / a) ** 2 + (yc / b) ** 2 <= inner] = 1
            if outer > 0:
                ring = ((xc / (a + thick)) ** 2 + (yc / (b + thick)) ** 2 <= outer) & (
                    labels[i, k] == 0
                )
                labels[i, k][ring] = 2
    noise = rng.normal(0, sigma, (2, *cine.shape)).astype(np.float32)
    cine = np.sqrt((cine + noise[0]) ** 2 + noise[1] ** 2)
    from medlens.measure.cardiac import cardiac_indices, cavity_areas, volume_curve

    volumes = volume_curve(cavity_areas(labels, (dx, dy), 1), dz)
    truth = {**cardiac_indices(volumes), "ef_analytic": 100 * ef,
             "volumes_ml": [round(float(v), 3) for v in volumes]}  # fmt: skip
    return cine, labels, truth


def _sources(src: Path, subjects: list[str] | None) -> list[dict[str, Any]]:
    """Background cines with the ventricle's centre: Sunnybrook patients, or cine files."""
    from medlens.data.sunnybrook import SunnybrookDataset, is_sunnybrook_folder

    if is_sunnybrook_folder(src):
        data = SunnybrookDataset(src, subjects=subjects)
        found = []
        for patient in data.patients:
            masks = [data[i].mask.array for i, e in enumerate(data.entries)
                     if e.subject == patient.name][:4]  # fmt: skip
            ys, xs = np.nonzero(np.sum(masks, axis=0))
            found.append({"path": src / "dicoms" / patient.series, "subject": patient.name,
                          "centre": (float(ys.mean()), float(xs.mean()))})  # fmt: skip
        return found
    paths = (
        [src] if src.is_file() else sorted(p for p in src.iterdir() if not p.name.startswith("."))
    )
    return [{"path": p, "subject": p.name.split(".")[0], "centre": None} for p in paths]


def simulate_cine_dataset(src: str | Path, dst: str | Path, *, count: int, seed: int = 0,
                          size: int = 96, ef_range: tuple[float, float] = (20.0, 70.0),
                          subjects: list[str] | None = None,
                          progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Write ``count`` SIMULATED phantoms over the real cines of ``src`` (only ``subjects``'
    where given) into ``dst`` (module notes): ``cines/sim-NNNN.nii.gz`` and
    ``labels/sim-NNNN.nii.gz`` (4D), ``cases.csv``."""
    from medlens._atomic import atomic_write_json, atomic_write_text, ensure_outside
    from medlens._progress import progress as show
    from medlens.io import load_image, save_image

    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise DatasetError("does not exist", src)
    ensure_outside(dst, src)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise MedlensError(f"{dst}: exists and is not an empty folder: refusing to write into it")
    if count < 1 or size < 32 or not 0 < ef_range[0] < ef_range[1] < 100:
        raise MedlensError(f"count {count}, size {size}, EF range {ef_range}: need count >= 1, "
                           "size >= 32 and 0 < low < high < 100")  # fmt: skip
    sources = _sources(src, subjects)
    rng = np.random.default_rng(seed)
    cines = {}
    rows = []
    (dst / "cines").mkdir(parents=True, exist_ok=True)
    (dst / "labels").mkdir(exist_ok=True)
    for n in show(range(count), "simulating cines", enabled=progress):
        source = sources[int(rng.integers(len(sources)))] if n >= len(sources) else sources[n]
        key = str(source["path"])
        if key not in cines:
            cines[key] = load_image(source["path"])
            if cines[key].leading != ("time",) or cines[key].spatial_dims != 3:
                raise DatasetError("not a cine stack (time, slice, y, x)", source["path"])
        cine = cines[key]
        h, w = cine.array.shape[-2:]
        cy, cx = source["centre"] or (h / 2, w / 2)
        top = int(np.clip(round(cy - size / 2), 0, max(h - size, 0)))
        left = int(np.clip(round(cx - size / 2), 0, max(w - size, 0)))
        crop = np.asarray(cine.array[..., top : top + size, left : left + size], np.float32)
        image, labels, truth = render_case(crop, tuple(cine.spacing), (cy - top, cx - left), rng,
                                           ef_range)  # fmt: skip
        case = f"sim-{n:04d}"
        meta = {"simulated": True, "time_points": cine.meta.get("time_points")}
        grid = Image(image, spacing=cine.spacing, leading=("time",), meta=meta)
        save_image(grid, dst / "cines" / f"{case}.nii.gz")
        save_image(grid.with_array(labels, role=Role.LABEL), dst / "labels" / f"{case}.nii.gz")
        rows.append([case, case, source["subject"], key, *image.shape[:2],
                     *(round(truth[k], 3) for k in ("ef_percent", "edv_ml", "esv_ml", "sv_ml")),
                     truth["ed_phase"], truth["es_phase"], round(truth["ef_analytic"], 3),
                     "true"])  # fmt: skip
    columns = ("case", "subject", "background", "source", "phases", "slices", "ef_percent",
               "edv_ml", "esv_ml", "sv_ml", "ed_phase", "es_phase", "ef_analytic",
               "simulated")  # fmt: skip
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    atomic_write_text(dst / "cases.csv", buffer.getvalue())
    names = sorted({s["subject"] for s in sources})
    atomic_write_json(dst / "dataset.json", {
        "name": "simulated-cine", "simulated": True, "task": "cine",
        "description": "SIMULATED beating-heart phantoms over real cine MRI backgrounds",
        "labels": {"0": "background", "1": "left ventricle", "2": "myocardium"},
        "cases": count, "seed": seed, "size": size, "ef_range": list(ef_range),
        "sources": names})  # fmt: skip
    atomic_write_text(dst / "README.txt", _README.format(count=count, sources=", ".join(names)))
    return {"output": str(dst), "cases": count, "sources": names}
